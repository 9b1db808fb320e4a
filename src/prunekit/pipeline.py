"""The whole pruning guide as one resumable run: train -> prune -> surgery -> finetune -> export -> quantize ->
evaluate -> predict -> report.

Each stage writes into ``OUT/stages/<stage>/`` and records a fingerprint of everything it depends on (its config
sections and its inputs' fingerprints) in ``.stage.json`` when it finishes. A re-run skips stages whose
fingerprint is unchanged; a changed setting reruns that stage and everything after it; a killed training stage
resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig, dump_config
from .errors import PrunekitError
from .io import check_writable_dir, read_json, write_json, write_text

STAGES = ("train", "prune", "surgery", "finetune", "export", "quantize", "evaluate", "predict", "report")
MARKER = ".stage.json"
DISTRIBUTED_STAGES = {"train", "prune", "finetune"}


@dataclass
class Stage:
    name: str
    deps: tuple[str, ...]  # upstream stages
    sections: tuple[str, ...]  # config sections it reads
    fn: Callable[[Pipeline, Path], dict[str, Any]]


def _fp(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pipeline:
    """Runs the stages of one :class:`RunConfig` in ``cfg.out``."""

    def __init__(self, cfg: RunConfig, log: Callable[[str], None] = print):
        from .train import init_distributed

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.log = log
        self.ctx = init_distributed(cfg.device)
        self.results: dict[str, dict[str, Any]] = {}
        self.fingerprints: dict[str, str] = {}
        self._data = None
        from . import stages as st

        self.stages = [
            Stage("train", (), ("model", "data", "train", "seed"), st.train),
            Stage("prune", ("train",), ("prune", "data", "seed"), st.prune),
            Stage("surgery", ("prune",), (), st.surgery),
            Stage("finetune", ("surgery", "train"), ("finetune", "train", "data", "seed"), st.finetune),
            Stage("export", ("finetune",), ("export",), st.export),
            Stage("quantize", ("export",), ("quantize", "data"), st.quantize),
            Stage("evaluate", ("train", "prune", "finetune", "quantize"), ("data", "bench"), st.evaluate),
            Stage("predict", ("export", "quantize"), ("predict", "data"), st.predict),
            Stage("report", ("train", "prune", "surgery", "finetune", "export", "quantize", "evaluate", "predict"),
                  (), st.report),
        ]

    # -- helpers used by stage functions --
    def stage_dir(self, name: str) -> Path:
        return self.out / "stages" / name

    def data(self, channels: int | None = None, size: list[int] | None = None):
        """The run's dataset (cached), converted to a model's input when given."""
        from .data.datasets import adapt
        from .workflows import make_data

        if self._data is None:
            self._data = make_data(self.cfg.data, seed=self.cfg.seed)
        return adapt(self._data, channels, size) if channels or size else self._data

    def section(self, name: str) -> Any:
        v = getattr(self.cfg, name)
        return dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v

    # -- running --
    def fingerprint(self, stage: Stage) -> str:
        payload = {"stage": stage.name, "sections": {s: self.section(s) for s in stage.sections},
                   "deps": {d: self.fingerprints.get(d) for d in stage.deps}}
        if stage.name == "train":
            payload["init"] = self.cfg.model.init
        return _fp(payload)

    def run(self, start: str | None = None) -> dict[str, Any]:
        if start is not None and start not in STAGES:
            from .errors import closest

            raise PrunekitError(f"unknown stage '{start}'{closest(start, STAGES)}; stages: {', '.join(STAGES)}")
        check_writable_dir(self.out, "run directory")
        if self.ctx.is_main:
            write_text(self.out / "config.yaml", dump_config(self.cfg))
        forced = False
        t_all = time.perf_counter()
        for stage in self.stages:
            forced = forced or stage.name == start
            fp = self.fingerprint(stage)
            self.fingerprints[stage.name] = fp
            d = self.stage_dir(stage.name)
            marker = read_json(d / MARKER) if (d / MARKER).is_file() else None
            if marker and marker.get("fingerprint") == fp and not forced:
                self.results[stage.name] = marker.get("result", {})
                self.log(f"[{stage.name}] up to date, skipped")
                continue
            partial = (d / "partial.json").is_file() and read_json(d / "partial.json").get("fingerprint") == fp
            if self.ctx.is_main and d.exists() and (marker or not partial or forced):
                shutil.rmtree(d)  # stale outputs from another config: start this stage afresh
            self._barrier()
            if self.ctx.is_main:
                d.mkdir(parents=True, exist_ok=True)
                write_json(d / "partial.json", {"fingerprint": fp})
            self._barrier()
            t0 = time.perf_counter()
            self.log(f"[{stage.name}] running" + (" (resuming)" if partial and not forced else ""))
            if stage.name in DISTRIBUTED_STAGES or self.ctx.is_main:
                result = stage.fn(self, d) or {}
            else:
                result = {}
            result["seconds"] = round(time.perf_counter() - t0, 2)
            self._barrier()
            if self.ctx.is_main:
                write_json(d / MARKER, {"fingerprint": fp, "result": result, "finished": time.time()})
                (d / "partial.json").unlink(missing_ok=True)
            self._barrier()
            if not self.ctx.is_main:
                result = read_json(d / MARKER)["result"]
            self.results[stage.name] = result
        self.results["_seconds"] = round(time.perf_counter() - t_all, 2)
        return self.results

    def _barrier(self) -> None:
        from .train.distributed import barrier

        barrier()


def stage_result(out: str | Path, stage: str) -> dict[str, Any] | None:
    p = Path(out) / "stages" / stage / MARKER
    return read_json(p).get("result") if p.is_file() else None
