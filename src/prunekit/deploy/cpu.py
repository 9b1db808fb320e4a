"""Which int8 settings suit the CPU that runs the model: detect its int8 instructions, pick ONNX Runtime's
quantization types for them, and say why.

ONNX Runtime's CPU kernels (MLAS) multiply uint8 activations by int8 weights natively with VNNI
(``vpdpbusd``, AVX-512 VNNI or AVX-VNNI) and AMX (``tdpbusd``); without VNNI the AVX2/AVX-512 path
(``vpmaddubsw``) sums pairs of u8*s8 products into int16 and can saturate, which ``reduce_range`` (7-bit
weights) avoids. ARM cores with the dot-product extension (``sdot``/``udot``) run signed int8 activations
well; ORT's guidance for ARM is S8S8. CPUs with none of these (x86 without AVX2, ARM without dot product)
have slow int8 kernels: int8 is still produced, but measurement usually keeps fp32
(see :mod:`prunekit.deploy.artifact`).

================  =========================================  ===========  =======  ============
class             detected from                              activations  weights  reduce_range
================  =========================================  ===========  =======  ============
x86-amx           ``amx_int8`` flag                          uint8        int8     no
x86-vnni          ``avx512_vnni`` or ``avx_vnni`` flag       uint8        int8     no
x86-avx512        ``avx512bw`` without VNNI                  uint8        int8     yes
x86-avx2          ``avx2`` without VNNI                      uint8        int8     yes
x86-legacy        x86 without AVX2                           uint8        int8     yes
arm-dotprod       ``asimddp`` feature, or Apple arm64        int8         int8     no
arm               ARM without dot product                    int8         int8     no
other             anything else                              int8         int8     no
================  =========================================  ===========  =======  ============

Detection reads ``/proc/cpuinfo`` and ``platform.machine()``. ``$PRUNEKIT_CPUINFO`` names another cpuinfo file
(a simulated CPU, architecture included: tests, or "quantize for that machine"); ``quantize.cpu`` forces a
class instead.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PrunekitError, unknown

CPUINFO_ENV = "PRUNEKIT_CPUINFO"
CPU_CLASSES = ("x86-amx", "x86-vnni", "x86-avx512", "x86-avx2", "x86-legacy", "arm-dotprod", "arm", "other")
ACTIVATION_TYPES = ("auto", "uint8", "int8")
WEIGHT_TYPES = ("auto", "int8", "uint8")

# class -> (activations, weights, reduce_range, int8 kernels expected to pay, why)
_TABLE: dict[str, tuple[str, str, bool, bool, str]] = {
    "x86-amx": ("uint8", "int8", False, True, "AMX int8 tiles (tdpbusd) multiply u8 activations by s8 weights "
                "without saturation"),
    "x86-vnni": ("uint8", "int8", False, True, "VNNI (vpdpbusd) multiplies u8 activations by s8 weights natively, "
                 "without saturation"),
    "x86-avx512": ("uint8", "int8", True, True, "AVX-512 without VNNI: the u8*s8 path (vpmaddubsw) can saturate "
                   "int16 sums; 7-bit weights (reduce_range) avoid it"),
    "x86-avx2": ("uint8", "int8", True, True, "AVX2 without VNNI: the u8*s8 path (vpmaddubsw) can saturate int16 "
                 "sums; 7-bit weights (reduce_range) avoid it"),
    "x86-legacy": ("uint8", "int8", True, False, "no AVX2: ONNX Runtime's int8 kernels have no fast path here; "
                   "int8 is likely slower than fp32"),
    "arm-dotprod": ("int8", "int8", False, True, "ARM dot-product instructions (sdot) run signed int8 "
                    "activations natively (ORT's guidance for ARM: S8S8)"),
    "arm": ("int8", "int8", False, False, "ARM without dot product: int8 gains are uncertain (ORT's guidance "
            "for ARM: S8S8)"),
    "other": ("int8", "int8", False, False, "unknown CPU: ONNX Runtime's default S8S8 QDQ"),
}


@dataclass(frozen=True)
class CpuInfo:
    """What matters about a CPU for int8: its architecture, model name, int8-relevant flags and class."""

    arch: str
    model: str
    flags: tuple[str, ...]
    cls: str
    source: str  # /proc/cpuinfo, $PRUNEKIT_CPUINFO=..., platform, or "quantize.cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_INT8_FLAGS = ("amx_int8", "amx_tile", "avx512_vnni", "avx_vnni", "avx512bw", "avx512f", "avx2", "sse4_1",
               "asimddp", "i8mm", "asimd", "sve")


def classify(arch: str, flags: set[str], system: str = "") -> str:
    """The CPU class (see the module table) of an architecture and its cpuinfo flags/features."""
    a = arch.lower()
    if a in ("x86_64", "amd64", "i386", "i686", "x86"):
        if "amx_int8" in flags:
            return "x86-amx"
        if flags & {"avx512_vnni", "avx_vnni"}:
            return "x86-vnni"
        if "avx512bw" in flags:
            return "x86-avx512"
        if "avx2" in flags:
            return "x86-avx2"
        return "x86-legacy"
    if a in ("aarch64", "arm64") or a.startswith("armv"):
        if "asimddp" in flags or (system == "Darwin" and a == "arm64"):  # every Apple arm64 core has dot product
            return "arm-dotprod"
        return "arm"
    return "other"


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) from ``/proc/cpuinfo`` text: x86 ``flags``, ARM ``Features``; first CPU only."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
    return model, flags


def _arch_of(cpuinfo: str) -> str | None:
    """x86_64 or aarch64 from the layout of cpuinfo text (x86 lists ``flags``, ARM ``Features``)."""
    keys = {line.partition(":")[0].strip().lower() for line in cpuinfo.splitlines()}
    if "flags" in keys:
        return "x86_64"
    if "features" in keys or "cpu implementer" in keys:
        return "aarch64"
    return None


def detect(cpuinfo: str | None = None, machine: str | None = None, system: str | None = None) -> CpuInfo:
    """This machine's :class:`CpuInfo` (or that of ``cpuinfo`` text / ``$PRUNEKIT_CPUINFO``, for tests)."""
    source = "given text"
    if cpuinfo is None:
        path = os.environ.get(CPUINFO_ENV)
        source = f"${CPUINFO_ENV}={path}" if path else "/proc/cpuinfo"
        try:
            cpuinfo = Path(path or "/proc/cpuinfo").read_text(errors="replace")
        except OSError as e:
            if path:
                raise PrunekitError(f"${CPUINFO_ENV}: cannot read {path} ({e.strerror})") from None
            cpuinfo, source = "", "platform"
    model, flags = parse_cpuinfo(cpuinfo)
    if machine is None and source.startswith("$"):  # a simulated CPU: its architecture is in its cpuinfo
        machine = _arch_of(cpuinfo)
    machine = machine or platform.machine()
    system = system if system is not None else platform.system()
    if not model:
        model = platform.processor() or machine
    if not flags and any(f in cpuinfo for f in ("x86", "aarch64")):
        source += " (no flags line)"
    cls = classify(machine, flags, system)
    return CpuInfo(machine, model, tuple(sorted(flags & set(_INT8_FLAGS))), cls, source)


@dataclass
class QuantSettings:
    """The int8 types used for one quantization and why: recommended for ``cpu`` unless overridden."""

    activations: str  # uint8 | int8
    weights: str  # int8 | uint8
    reduce_range: bool
    per_channel: bool
    cpu: CpuInfo
    int8_expected_faster: bool
    reason: str
    overridden: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """ORT's shorthand: U8S8, S8S8, U8U8 (+ reduce_range)."""
        s = {"uint8": "U8", "int8": "S8"}
        return s[self.activations] + s[self.weights] + (" reduce_range" if self.reduce_range else "")

    def to_dict(self) -> dict[str, Any]:
        return {"activations": self.activations, "weights": self.weights, "reduce_range": self.reduce_range,
                "per_channel": self.per_channel, "label": self.label, "cpu_class": self.cpu.cls,
                "cpu": self.cpu.model, "cpu_flags": list(self.cpu.flags), "cpu_source": self.cpu.source,
                "int8_expected_faster": self.int8_expected_faster, "reason": self.reason,
                "overridden": list(self.overridden)}


def settings_for(cpu: CpuInfo | None = None, *, cpu_class: str = "auto", activations: str = "auto",
                 weights: str = "auto", reduce_range: bool | None = None, per_channel: bool = True) -> QuantSettings:
    """Quantization settings for ``cpu`` (default: this machine); every value can be given instead of chosen.

    >>> s = settings_for(CpuInfo("x86_64", "test", ("avx2",), "x86-avx2", "test"))
    >>> (s.activations, s.weights, s.reduce_range)
    ('uint8', 'int8', True)
    """
    cpu = cpu or detect()
    if cpu_class != "auto":
        if cpu_class not in CPU_CLASSES:
            raise unknown("CPU class", cpu_class, CPU_CLASSES)
        cpu = CpuInfo(cpu.arch, cpu.model, cpu.flags, cpu_class, "quantize.cpu")
    for name, v, ok in (("activations", activations, ACTIVATION_TYPES), ("weights", weights, WEIGHT_TYPES)):
        if v not in ok:
            raise unknown(f"{name} type", v, ok)
    act, wt, rr, fast, why = _TABLE[cpu.cls]
    over = []
    if activations != "auto" and activations != act:
        act = activations
        over.append(f"activations={activations}")
    if weights != "auto" and weights != wt:
        wt = weights
        over.append(f"weights={weights}")
    if reduce_range is not None and reduce_range != rr:
        rr = reduce_range
        over.append(f"reduce_range={str(reduce_range).lower()}")
    origin = "forced by quantize.cpu" if cpu.source == "quantize.cpu" else f"detected from {cpu.source}"
    reason = f"{cpu.cls} ({origin}; {cpu.model}): {why}"
    if over:
        reason += f"; overridden: {', '.join(over)}"
    if act == "uint8" and wt == "int8" and not rr and cpu.cls in ("x86-avx2", "x86-avx512", "x86-legacy"):
        reason += " (warning: U8S8 without reduce_range may saturate on this CPU)"
    return QuantSettings(act, wt, rr, per_channel, cpu, fast, reason, over)
