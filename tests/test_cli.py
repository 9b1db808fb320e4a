"""CLI behaviour end to end on the session fixtures: train/summary/plan/prune/surgery/eval/fine-tune."""

import json

import torch

from conftest import run_cli


def test_summary_table_and_json(tiny_model_dir, shrunk_model_dir):
    rc, out, err = run_cli("summary", "--model", tiny_model_dir)
    assert rc == 0 and "blocks.12.pw.conv" in out and "total" in out
    rc, out, _ = run_cli("summary", "--model", shrunk_model_dir, "--json")
    small = json.loads(out)
    rc, out, _ = run_cli("summary", "--model", tiny_model_dir, "--json")
    big = json.loads(out)
    assert small["params"] < big["params"] and small["macs"] < big["macs"]
    assert {"name", "type", "in_channels", "out_channels", "kernel", "groups", "params", "macs"} <= set(big["layers"][0])


def test_summary_of_a_masked_model_lists_groups(pruned_model_dir):
    rc, out, _ = run_cli("summary", "--model", pruned_model_dir)
    assert rc == 0 and "masked groups" in out and "blocks.0.pw.conv" in out


def test_plan_lists_groups_and_reasons(tiny_model_dir):
    rc, out, _ = run_cli("plan", "--model", tiny_model_dir, "--json")
    plan = json.loads(out)
    status = {g["group"]: (g["status"], g["reason"]) for g in plan["groups"]}
    assert status["blocks.0.pw.conv"][0] == "prune" and status["stem.conv"][0] == "skip"
    assert status["classifier"] == ("locked", "model output")
    assert plan["selected"] == 13
    rc, out, err = run_cli("plan", "--model", "torchvision:resnet18", "--layers", "all")
    assert rc == 0 and "prune" in out


def test_pruned_model_artifacts_and_surgery_json(pruned_model_dir, tmp_path):
    run = pruned_model_dir.parent
    for f in ("summary.md", "summary.json", "kept_channels.png", "importance_hist.png", "weight_hist.png",
              "sparsity.png", "metrics.jsonl", "prune_config.json"):
        assert (run / f).is_file(), f
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "prune" for e in events) and any("test_top1" in e for e in events)
    rc, out, err = run_cli("surgery", "--model", pruned_model_dir, "--out", tmp_path / "s", "--json")
    res = json.loads(out)
    assert rc == 0 and res["max_abs_diff"] <= 1e-4 and res["params_after"] < res["params_before"]
    assert {"max_abs_diff", "params_before", "params_after", "macs_before", "macs_after", "groups",
            "channels_removed", "seconds"} <= set(res)


def test_masked_and_shrunk_models_score_the_same(pruned_model_dir, shrunk_model_dir):
    rc, a, _ = run_cli("eval", "--model", pruned_model_dir, "--json")
    rc2, b, _ = run_cli("eval", "--model", shrunk_model_dir, "--json")
    a, b = json.loads(a), json.loads(b)
    assert rc == rc2 == 0 and a["n"] == b["n"] == 1000
    assert abs(a["top1"] - b["top1"]) <= 0.1  # at most one borderline image of 1000


def test_fine_tune_the_shrunk_model(shrunk_model_dir, tmp_path):
    rc, out, err = run_cli("train", "--init", shrunk_model_dir, "--data", "bundled", "--epochs", "1", "--lr", "0.02",
                           "--out", tmp_path / "ft")
    assert rc == 0, err
    rc, out, _ = run_cli("summary", "--model", tmp_path / "ft" / "model", "--json")
    rc2, out2, _ = run_cli("summary", "--model", shrunk_model_dir, "--json")
    assert json.loads(out)["params"] == json.loads(out2)["params"]  # same (small) architecture
    rc, out, err = run_cli("train", "--init", shrunk_model_dir, "--width", "0.5", "--out", tmp_path / "x")
    assert rc == 2 and "--init takes the architecture" in err


def test_torchvision_one_line_surgery(tmp_path):
    rc, out, err = run_cli("surgery", "--model", "torchvision:mobilenet_v2", "--sparsity", "0.5", "--layers", "all",
                           "--image-size", "64", "--out", tmp_path / "mv2", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["max_abs_diff"] <= 1e-4 and res["params_after"] < 0.7 * res["params_before"]
    from prunekit import load

    assert sum(p.numel() for p in load(tmp_path / "mv2").model.parameters()) == res["params_after"]


def test_a_shrunk_model_reloads_and_computes_what_the_masked_model_did(tmp_path):
    """surgery -> save -> load: the reloaded model reproduces the masked original (not just "loads")."""
    import torch

    from prunekit import load, save
    from prunekit.pruning import OneShot, PruningConfig, prune_
    from prunekit.saved import resolve

    torch.manual_seed(0)
    ref = resolve("torchvision:resnet18", num_classes=10)
    with torch.no_grad():  # BN statistics that make every channel matter
        for m in ref.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.bias.uniform_(-0.5, 0.5)
    save(ref.model, tmp_path / "dense", ref.spec)
    rc, out, err = run_cli("surgery", "--model", tmp_path / "dense", "--sparsity", "0.4", "--layers", "all",
                           "--out", tmp_path / "small")
    assert rc == 0, err
    small = load(tmp_path / "small").model.eval()
    masked = ref.model.eval()
    prune_(masked, PruningConfig(schedule=OneShot(0.4), layers="all", round_to=8), (3, 224, 224)).step(0)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = masked(x), small(x)
    assert got.shape == (2, 10) and (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
    assert sum(p.numel() for p in small.parameters()) < 0.8 * sum(p.numel() for p in masked.parameters())


def test_help_for_every_command():
    from prunekit.cli import COMMANDS

    for name, _, _ in COMMANDS:
        rc, out, _ = run_cli(name, "--help")
        assert rc == 0 and "usage: prunekit" in out and ("example" in out or name in ("run",)), name


def test_failed_command_removes_the_output_dir_it_created(tmp_path):
    rc, _, err = run_cli("train", "--data", "bundled", "--set", "train.batch_size=100000", "--out", tmp_path / "new")
    assert rc == 2 and "larger than the training set" in err
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    rc, _, err = run_cli("train", "--data", "bundled", "--set", "train.batch_size=100000", "--out", tmp_path / "old")
    assert rc == 2 and (tmp_path / "old" / "keep.txt").read_text() == "mine"
    # an earlier successful command's output survives a later failure in the same process
    rc, _, _ = run_cli("surgery", "--model", "torchvision:squeezenet1_1", "--sparsity", "0.3", "--image-size", "64",
                       "--out", tmp_path / "ok")
    assert rc == 0
    rc, _, _ = run_cli("surgery", "--model", "torchvision:nope", "--sparsity", "0.3", "--out", tmp_path / "bad")
    assert rc == 2 and (tmp_path / "ok" / "model.json").is_file() and not (tmp_path / "bad").exists()


def test_train_reinit_trains_a_pruned_architecture_from_scratch(shrunk_model_dir, tmp_path):
    """`prunekit train --init DIR --reinit`: DIR's architecture (a shrunk model), fresh weights."""
    from safetensors.torch import load_file

    rc, out, err = run_cli("train", "--init", shrunk_model_dir, "--reinit", "--epochs", "0", "--data", "bundled",
                           "--out", tmp_path / "r")
    assert rc == 0, err
    old = load_file(shrunk_model_dir / "model.safetensors")
    new = load_file(tmp_path / "r" / "model" / "model.safetensors")
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in old.items()}
    assert not any(torch.equal(new[k], old[k]) for k in new if k.endswith("conv.weight"))
    from prunekit import load

    assert load(tmp_path / "r" / "model").spec.extra["reinitialised_from"] == str(shrunk_model_dir)
    rc, out, err = run_cli("train", "--init", shrunk_model_dir, "--epochs", "0", "--data", "bundled",
                           "--out", tmp_path / "k")  # without --reinit: the weights as they were
    kept = load_file(tmp_path / "k" / "model" / "model.safetensors")
    assert rc == 0 and all(torch.equal(kept[k], old[k]) for k in old)
    rc, out, err = run_cli("train", "--reinit", "--epochs", "0", "--data", "bundled", "--out", tmp_path / "x")
    assert rc == 2 and "needs a saved model" in err and len(err.strip().splitlines()) == 1
