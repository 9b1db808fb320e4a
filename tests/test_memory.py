"""The memory budget and the estimates that refuse work before it starts (issue 21)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import run_cli
from prunekit import memory
from prunekit.errors import PrunekitError
from prunekit.models import create_model


@pytest.fixture(autouse=True)
def no_user_limit(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    memory.set_max_memory(None)
    yield
    memory.set_max_memory(None)


@pytest.mark.parametrize("text,n", [("8G", 8 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("1000", 1000),
                                    ("64k", 64 << 10), (" 2 GB ", 2 << 30)])
def test_parse_size(text, n):
    assert memory.parse_size(text) == n


@pytest.mark.parametrize("text", ["", "banana", "-1G", "0", "8X", "1e9"])
def test_parse_size_rejects(text):
    with pytest.raises(PrunekitError, match="must be"):
        memory.parse_size(text)


def test_budget_is_the_smallest_source(monkeypatch):
    b = memory.budget()
    assert b is not None and b[0] > 0  # Linux: MemAvailable at least
    monkeypatch.setenv(memory.ENV, "1M")
    assert memory.budget() == (1 << 20, "$PRUNEKIT_MAX_MEMORY")
    memory.set_max_memory(2 << 20)  # the CLI option wins over the environment
    assert memory.budget() == (2 << 20, "--max-memory")
    monkeypatch.setenv(memory.ENV, "lots")
    memory.set_max_memory(None)
    with pytest.raises(PrunekitError, match=r"\$PRUNEKIT_MAX_MEMORY must be a size"):
        memory.budget()


def test_require(monkeypatch):
    monkeypatch.setenv(memory.ENV, "100M")
    memory.require(99 << 20, "x")
    with pytest.raises(PrunekitError, match=r"^thing needs about 200.0 MiB of memory but only 100.0 MiB is "
                                            r"available \(\$PRUNEKIT_MAX_MEMORY\); smaller; refusing"):
        memory.require(200 << 20, "thing", "smaller")


def test_address_space_limit_counts():
    """Under RLIMIT_AS the headroom below the limit is part of the budget (in a child, to keep this process free)."""
    code = ("import resource; from prunekit import memory\n"
            "vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize'))\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))\n"
            "b = memory.budget(); print(b[1], b[0] / 2**30)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    source, gib = r.stdout.rsplit(" ", 1)
    assert source == "RLIMIT_AS" and 0.9 < float(gib) <= 1.0, r.stdout


def test_estimate_allocates_nothing_and_matches_shapes():
    m = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)
    a = memory.activations(m, (1, 28, 28))
    assert a.exact and a.input == 4 * 28 * 28
    assert a.largest == 4 * 16 * 28 * 28  # blocks.0.pw: 16 channels at full resolution (stride-1 stem)
    assert a.params == sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
    # a 4096x4096 input: ~21000x more activations, estimated in milliseconds without allocating them
    big = memory.activations(m, (1, 4096, 4096))
    assert big.total > 20_000 * a.total * 0.9
    with torch.device("meta"):
        meta = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)
    assert memory.activations(meta, (1, 28, 28)) == a  # works on the meta device too


def test_create_model_refuses_parameters_that_cannot_fit(address_space_cap, monkeypatch):
    monkeypatch.setenv(memory.ENV, "1G")
    # width 16: 16384 features; a million classes: a 64 GiB classifier. Counted on meta, refused in milliseconds.
    with pytest.raises(PrunekitError, match=r"building 'mobilenet_v1' \(17,189,811,776 parameters\) needs about "
                                            r"128.1 GiB"):
        create_model("mobilenet_v1", width=16, num_classes=1_000_000)
    with pytest.raises(PrunekitError, match="kwargs.num_classes must be between 1 and 1,000,000"):
        create_model("mobilenet_v1", num_classes=10**9)


def test_training_and_evaluation_batches_are_checked(address_space_cap, monkeypatch, tmp_path):
    """A config within its own limits (1024 px, batch 128) whose training batch cannot fit: refused before the
    first step, with nothing left in --out."""
    monkeypatch.setenv(memory.ENV, "3G")
    rc, so, se = run_cli("train", "--data", "synthetic", "--image-size", "256", "--width", "0.25", "--device", "cpu",
                         "--set", "train.max_steps=1", "--set", "train.batch_size=256", "--out", tmp_path / "t")
    assert rc == 2, se
    assert "training (batch 256 of 1x256x256 inputs) needs about" in se, se
    assert not (tmp_path / "t").exists()


def test_data_conversion_is_checked(address_space_cap, monkeypatch):
    from prunekit.data import load_data

    monkeypatch.setenv(memory.ENV, "1G")
    with pytest.raises(PrunekitError, match=r"converting the bundled images \(5,000\) to 1x1024x1024 needs about"):
        load_data("bundled", size=[1024, 1024])
    with pytest.raises(PrunekitError, match="generating 512 \\+ 256 synthetic 3x1024x1024 images needs about"):
        load_data("synthetic", channels=3, size=[1024, 1024])


def test_cli_max_memory_option(tiny_untrained_dir):
    rc, so, se = run_cli("--max-memory", "1M", "summary", "--model", tiny_untrained_dir)
    assert rc == 2 and "only 1.0 MiB is available (--max-memory)" in se, se
    rc, so, se = run_cli("--max-memory", "8G", "summary", "--model", tiny_untrained_dir)
    assert rc == 0, se
    rc, so, se = run_cli("--max-memory", "lots", "summary", "--model", tiny_untrained_dir)
    assert rc == 2 and "--max-memory must be a size like 8G" in se, se


@pytest.fixture(scope="module")
def tiny_untrained_dir(tmp_path_factory):
    from prunekit.models import InputSpec, ModelSpec, save_model

    s = ModelSpec("mobilenet_v1", {"width": 0.25, "num_classes": 10, "in_channels": 1, "small_input": True},
                  InputSpec([28, 28], 1, [0.286], [0.353]))
    d = tmp_path_factory.mktemp("mem") / "m"
    save_model(s.build(), d, s)
    return d


def test_estimate_leaves_a_masked_model_unchanged():
    """A real model runs the empty batch with its own tensors: mask caches never see a stand-in."""
    from prunekit.pruning import OneShot, PruningConfig, prune_

    torch.manual_seed(0)
    m = create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True).eval()
    pruner = prune_(m, PruningConfig(schedule=OneShot(0.5)), (1, 28, 28))
    pruner.step(0)
    x = torch.randn(2, 1, 28, 28)
    from prunekit.pruning.masks import MASK_MODULE

    with torch.no_grad():
        before = m(x)
        cached = getattr(m, MASK_MODULE)._flat  # the masks, concatenated and cached by buffer version
        assert memory.activations(m, (1, 28, 28)).exact
        assert getattr(m, MASK_MODULE)._flat is cached  # not recomputed from stand-ins
        assert torch.equal(m(x), before)
