"""CPU-aware int8 settings: detection from (simulated) /proc/cpuinfo, the settings of every CPU class, overrides,
and that the settings reach the int8 model (types, 7-bit weights) and its metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import run_cli, run_cli_subprocess
from prunekit.deploy.cpu import CPU_CLASSES, CpuInfo, classify, detect, parse_cpuinfo, settings_for

X86 = ("processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
       "processor\t: 1\nflags\t\t: fpu\n")
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {flags}\nCPU implementer\t: 0x41\n"
BASE = "fpu vme de pse tsc msr sse sse2 ssse3 sse4_1 sse4_2 popcnt"
CPUS = {  # name: (machine, cpuinfo text, expected class)
    "sapphire_rapids": ("x86_64", X86.format(vendor="GenuineIntel", model="Intel Xeon Platinum 8480+",
                        flags=f"{BASE} avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8 amx_bf16"),
                        "x86-amx"),
    "zen4": ("x86_64", X86.format(vendor="AuthenticAMD", model="AMD EPYC 9654",
             flags=f"{BASE} avx avx2 avx512f avx512bw avx512_vnni avx512_bf16"), "x86-vnni"),
    "alder_lake": ("x86_64", X86.format(vendor="GenuineIntel", model="12th Gen Intel Core i7-1260P",
                   flags=f"{BASE} avx avx2 avx_vnni"), "x86-vnni"),
    "skylake_sp": ("x86_64", X86.format(vendor="GenuineIntel", model="Intel Xeon Gold 6148",
                   flags=f"{BASE} avx avx2 avx512f avx512bw avx512cd"), "x86-avx512"),
    "haswell": ("x86_64", X86.format(vendor="GenuineIntel", model="Intel Core i7-4770", flags=f"{BASE} avx avx2"),
                "x86-avx2"),
    "westmere": ("x86_64", X86.format(vendor="GenuineIntel", model="Intel Xeon X5650", flags=BASE), "x86-legacy"),
    "graviton2": ("aarch64", ARM.format(flags="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp"),
                  "arm-dotprod"),
    "cortex_a53": ("aarch64", ARM.format(flags="fp asimd evtstrm aes pmull sha1 sha2 crc32"), "arm"),
    "riscv": ("riscv64", "processor\t: 0\nisa\t\t: rv64imafdc\n", "other"),
}


@pytest.mark.parametrize("name", list(CPUS))
def test_detect_classifies_simulated_cpus(name):
    machine, text, cls = CPUS[name]
    info = detect(text, machine=machine, system="Linux")
    assert info.cls == cls and info.arch == machine
    if machine == "x86_64":
        assert info.model.startswith(("Intel", "AMD", "12th"))
        assert "fpu" not in info.flags  # only the int8-relevant flags are kept
    # only the first CPU's flags count (the second one above lists fpu only)
    assert parse_cpuinfo(text)[1] >= ({"avx2"} if cls in ("x86-avx2", "x86-vnni") else set())


def test_apple_silicon_and_missing_cpuinfo():
    assert classify("arm64", set(), "Darwin") == "arm-dotprod"  # no /proc/cpuinfo on macOS
    assert classify("arm64", set(), "Linux") == "arm"
    assert detect("", machine="x86_64", system="Linux").cls == "x86-legacy"


# class -> (activations, weights, reduce_range, int8 expected to pay)
EXPECTED = {"x86-amx": ("uint8", "int8", False, True), "x86-vnni": ("uint8", "int8", False, True),
            "x86-avx512": ("uint8", "int8", True, True), "x86-avx2": ("uint8", "int8", True, True),
            "x86-legacy": ("uint8", "int8", True, False), "arm-dotprod": ("int8", "int8", False, True),
            "arm": ("int8", "int8", False, False), "other": ("int8", "int8", False, False)}


@pytest.mark.parametrize("cls", CPU_CLASSES)
def test_settings_of_every_cpu_class(cls):
    assert set(EXPECTED) == set(CPU_CLASSES)
    s = settings_for(CpuInfo("x86_64", "test cpu", (), cls, "test"))
    assert (s.activations, s.weights, s.reduce_range, s.int8_expected_faster) == EXPECTED[cls]
    assert s.reason.startswith(f"{cls} (detected from test; test cpu): ") and not s.overridden
    d = s.to_dict()
    assert d["cpu_class"] == cls and d["label"].startswith({"uint8": "U8", "int8": "S8"}[s.activations])


def test_every_setting_can_be_overridden():
    vnni = CpuInfo("x86_64", "AMD EPYC", ("avx512_vnni",), "x86-vnni", "test")
    s = settings_for(vnni, activations="int8", weights="int8", reduce_range=True, per_channel=False)
    assert (s.activations, s.weights, s.reduce_range, s.per_channel) == ("int8", "int8", True, False)
    assert s.overridden == ["activations=int8", "reduce_range=true"] and "overridden" in s.reason
    # forcing a class: settings for another machine
    s = settings_for(vnni, cpu_class="arm-dotprod")
    assert (s.activations, s.cpu.cls, s.cpu.source) == ("int8", "arm-dotprod", "quantize.cpu")
    assert "forced by quantize.cpu" in s.reason
    # an override that invites saturation is flagged
    s = settings_for(CpuInfo("x86_64", "Haswell", ("avx2",), "x86-avx2", "test"), reduce_range=False)
    assert "may saturate" in s.reason


def _weights_and_zero_points(path):
    q = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    weights = [inits[n.input[0]] for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].ndim == 4]
    act_zp = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    return weights, act_zp


@pytest.mark.parametrize("name,label,act_dtype,max_w", [("haswell", "U8S8 reduce_range", np.uint8, 64),
                                                        ("zen4", "U8S8", np.uint8, 127),
                                                        ("graviton2", "S8S8", np.int8, 127)])
def test_simulated_cpu_reaches_the_int8_model(fp32_model, tmp_path, name, label, act_dtype, max_w):
    """A fake /proc/cpuinfo ($PRUNEKIT_CPUINFO) decides the types: checked in the graph itself, not only the
    metadata. reduce_range stores 7-bit weights (|w| <= 64). The simulated file also gives the architecture."""
    machine, text, cls = CPUS[name]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    out = tmp_path / "m.int8.onnx"
    r = run_cli_subprocess("quantize", "--model", fp32_model, "--data", "bundled", "--calib-samples", "64",
                           "--out", out, "--no-eval", "--json", env={"PRUNEKIT_CPUINFO": str(cpuinfo)})
    assert r.returncode == 0, r.stderr
    _check_int8(out, json.loads(r.stdout), cls, label, act_dtype, max_w, f"$PRUNEKIT_CPUINFO={cpuinfo}")


def test_forced_cpu_class_reaches_the_int8_model(fp32_model, tmp_path):
    out = tmp_path / "arm.int8.onnx"
    rc, so, se = run_cli("quantize", "--model", fp32_model, "--data", "bundled", "--calib-samples", "64", "--out", out,
                         "--no-eval", "--json", "--cpu", "arm-dotprod")
    assert rc == 0, se
    _check_int8(out, json.loads(so), "arm-dotprod", "S8S8", np.int8, 127, "quantize.cpu")


def _check_int8(out, res, cls, label, act_dtype, max_w, source):
    weights, act_zp = _weights_and_zero_points(out)
    assert weights and act_zp
    assert all(z.dtype == act_dtype for z in act_zp)
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= max_w
    if max_w == 127:  # full 8-bit range used somewhere
        assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) > 64
    info = json.loads(out.with_name(out.name + ".json").read_text())["info"]["quantization"]
    assert info["cpu_class"] == cls and info["label"] == label and info["cpu_source"] == source
    assert info["reason"].startswith(cls) and res["settings"]["label"] == label


def test_bad_cpuinfo_path_is_a_one_line_error(fp32_model, tmp_path):
    r = run_cli_subprocess("quantize", "--model", fp32_model, "--data", "bundled", "--out", tmp_path / "x.onnx",
                           "--no-eval", env={"PRUNEKIT_CPUINFO": str(tmp_path / "missing")})
    assert r.returncode == 2 and "PRUNEKIT_CPUINFO" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.onnx").exists()
