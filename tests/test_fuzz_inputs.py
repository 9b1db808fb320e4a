"""Fuzzing the files prunekit reads (issue 21): every mutated ``model.json``, deployment metadata (sidecar and
embedded in ONNX) and run config either works (exit 0) or is refused with exit 2 and exactly one line on stderr,
never a traceback, a crash or a kill, each in its own process under a 6 GiB address-space limit (forked from one
that imported torch and prunekit once and ran nothing else: ``cli_fork``).

The default suite runs 30 mutations: the two cases of issue 21, a 5000-deep sidecar and a YAML alias bomb, plus
a fixed-seed sample spread over all targets and mutation kinds (cheap commands only: no `prunekit run`);
the slow test runs many more over every command (``PRUNEKIT_FUZZ_N``, default 400) and prints the counts per
outcome class. ``benchmarks/fuzz_model_files.py`` records the same counts with the machine and versions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fuzz_inputs as fz

DEFAULT_N = 26
# always in the default sample: the two cases of issue 21, the deepest nesting, and a YAML alias bomb
FIXED = [fz.Mutation("model.json", ("layers", "blocks.0.pw.conv", "out_channels"), "huge"),
         fz.Mutation("model.json", ("input", "size", 0), "huge"),
         fz.Mutation("sidecar", (), "very-deep"),
         fz.Mutation("config", ("model", "kwargs"), "alias-bomb")]
QUICK = {**fz.COMMANDS,  # `run` trains every stage (~20 s): slow suite only
         "config": fz.COMMANDS["config"][:1]}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> fz.World:
    return fz.build_world(tmp_path_factory.mktemp("fuzz") / "world")


def test_mutations_cover_every_field_and_kind(world):
    ms = fz.all_mutations(world)
    assert {m.target for m in ms} == {"model.json", "sidecar", "embedded", "config"}
    ids = {m.id for m in ms}
    for probe in ("model.json:layers.blocks.0.pw.conv.out_channels:huge", "model.json:input.size.0:int64-overflow",
                  "model.json:extra.pruning.input_shape:missing", "sidecar:input.channels:nan",
                  "embedded:class_names:very-deep", "config:data.image_size:float-huge", "config:model:alias-bomb"):
        assert probe in ids, probe
    sample = fz.pick(ms, DEFAULT_N, seed=0)
    assert len({m.id for m in sample}) == DEFAULT_N
    assert {m.target for m in sample} == {"model.json", "sidecar", "embedded", "config"}
    assert len({m.kind for m in sample}) >= 20


def test_mutated_documents_are_what_they_claim(world):
    doc = world.docs["model.json"]
    m = fz.Mutation("model.json", ("layers", "blocks.0.pw.conv", "out_channels"), "huge")
    assert json.loads(fz.apply(doc, m, "json"))["layers"]["blocks.0.pw.conv"]["out_channels"] == 10**9
    m = fz.Mutation("model.json", ("input", "size"), "missing")
    assert "size" not in json.loads(fz.apply(doc, m, "json"))["input"]
    deep = fz.apply(doc, fz.Mutation("model.json", ("kwargs",), "very-deep"), "json")
    assert "[" * 5000 in deep
    bomb = fz.apply(world.docs["config"], fz.Mutation("config", ("model",), "alias-bomb"), "yaml")
    assert "*l7" in bomb and len(bomb) < 5000


def test_classify():
    assert fz.classify(0, "", "")[0] == "ok"
    assert fz.classify(2, "", "prunekit eval: error: x\n")[:2] == ("exit-2", "validation")
    assert fz.classify(2, "", "prunekit eval: error: x needs 1 GiB of memory but only 1 MiB\n")[1] == "memory"
    assert fz.classify(2, "", "a\nprunekit eval: error: x\n")[0] == "exit-2-multiline"
    assert fz.classify(1, "", "Traceback (most recent call last):\n ...\nRuntimeError: x\n")[0] == "traceback"
    assert fz.classify(-9, "", "")[0] == "signal-9"
    assert fz.classify(None, "", "")[0] == "timeout"


@pytest.fixture(scope="module")
def default_outcomes(world, tmp_path_factory) -> dict[str, fz.Outcome]:
    ids = {m.id for m in fz.all_mutations(world)}
    assert all(m.id in ids for m in FIXED)
    sample = FIXED + [m for m in fz.pick(fz.all_mutations(world), DEFAULT_N + len(FIXED), seed=0)
                      if m not in FIXED][:DEFAULT_N]
    outs = fz.run_all(world, sample, tmp_path_factory.mktemp("fuzz_runs"), workers=2, commands=QUICK, fork=True)
    return {o.mutation: o for o in outs}


def test_fuzzed_inputs_never_crash(default_outcomes):
    s = fz.summarise(list(default_outcomes.values()))
    used = {o.command for o in default_outcomes.values()}
    assert used == {c[0] for cs in QUICK.values() for c in cs}, used  # every command got some mutations
    print(f"\nfuzz (default, seed 0): {s['tried']} mutated inputs; outcomes {s['outcomes']}; "
          f"refused by {s['refused_by']}")
    assert s["tried"] == DEFAULT_N + len(FIXED)
    assert not s["failures"], json.dumps(s["failures"], indent=1)
    assert set(s["outcomes"]) <= {"ok", "exit-2"}


@pytest.mark.slow
def test_fuzzed_inputs_never_crash_many(world, tmp_path_factory):
    n = int(os.environ.get("PRUNEKIT_FUZZ_N", "400"))
    seed = int(os.environ.get("PRUNEKIT_FUZZ_SEED", "1"))
    sample = fz.pick(fz.all_mutations(world), n, seed=seed)
    outs = fz.run_all(world, sample, tmp_path_factory.mktemp("fuzz_many"), workers=2, fork=True)
    s = fz.summarise(outs)
    print(f"\nfuzz (slow, seed {seed}): {s['tried']} mutated inputs; outcomes {s['outcomes']}; refused by "
          f"{s['refused_by']}\nby target: {json.dumps(s['by_target'])}")
    Path(os.environ.get("PRUNEKIT_FUZZ_REPORT", os.devnull)).write_text(json.dumps(s, indent=1))
    assert not s["failures"], json.dumps(s["failures"][:20], indent=1)
