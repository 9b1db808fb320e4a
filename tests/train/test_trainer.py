import json

import pytest
import torch

from prunekit.data import synthetic
from prunekit.errors import PrunekitError
from prunekit.models import create_model
from prunekit.train import TrainConfig, accuracy, evaluate, fit
from prunekit.train.optim import cosine_lr, param_groups


def tiny(seed=0):
    torch.manual_seed(seed)
    return create_model("mobilenet_v1", width=0.25, num_classes=10, in_channels=1, small_input=True)


@pytest.fixture(scope="module")
def data():
    return synthetic(train_size=256, test_size=64)


def cfg(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "lr": 0.05, "warmup_epochs": 0.5, **kw})


def test_learns_synthetic_data_and_logs_metrics(tmp_path, data):
    m = tiny()
    res = fit(m, data, cfg(epochs=8), tmp_path, progress=False, log=lambda s: None)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert {"train_loss", "test_top1", "test_top5", "lr", "img_per_s"} <= set(rows[0])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3
    assert res["test"]["top1"] > 20  # 10 classes: chance is 10%
    assert (tmp_path / "checkpoint.pt").is_file()


def test_resume_equals_uninterrupted_run(tmp_path, data):
    ref = tiny()
    fit(ref, data, cfg(), tmp_path / "a", progress=False, log=lambda s: None)
    m = tiny()
    fit(m, data, cfg(max_steps=11), tmp_path / "b", progress=False, log=lambda s: None)  # "killed" mid-epoch 2
    assert not all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), m.state_dict().values(), strict=True))
    m2 = tiny(seed=123)  # a fresh process: different init, everything comes from the checkpoint
    fit(m2, data, cfg(), tmp_path / "b", resume=True, progress=False, log=lambda s: None)
    for (k, a), b in zip(ref.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # no duplicate rows after resuming


def test_resume_with_a_different_config_is_refused(tmp_path, data):
    fit(tiny(), data, cfg(max_steps=3), tmp_path, progress=False, log=lambda s: None)
    with pytest.raises(PrunekitError, match="different training config"):
        fit(tiny(), data, cfg(lr=0.2), tmp_path, resume=True, progress=False, log=lambda s: None)


def test_cosine_schedule_with_warmup():
    assert cosine_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 1.0, warmup_steps=10, min_lr=0.01) == pytest.approx(0.01)


def test_no_weight_decay_on_bn_and_bias():
    m = tiny()
    decay, no_decay = param_groups(m, 1e-4)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0 and len(no_decay["params"]) > 0


def test_accuracy_and_evaluate(data):
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05]])
    assert accuracy(logits, torch.tensor([1, 2]), ks=(1, 2)) == [1, 1]
    r = evaluate(tiny(), data, "test", batch_size=50)
    assert r["n"] == 64 and 0 <= r["top1"] <= r["top5"] <= 100


@pytest.mark.parametrize("kw,msg", [({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch_size"),
                                    ({"lr": float("nan")}, "lr"), ({"optimizer": "lion"}, "optimizer"),
                                    ({"label_smoothing": 1.0}, "label_smoothing")])
def test_bad_train_config(kw, msg):
    with pytest.raises(PrunekitError, match=msg):
        TrainConfig(**kw).validate()


def test_batch_larger_than_dataset(data, tmp_path):
    with pytest.raises(PrunekitError, match="larger than the training set"):
        fit(tiny(), data, cfg(batch_size=1000), tmp_path, progress=False, log=lambda s: None)


def test_distillation_pulls_the_student_towards_the_teacher(tmp_path, data):
    teacher = tiny(seed=1)
    fit(teacher, data, cfg(epochs=3), None, progress=False, log=lambda s: None)
    teacher.eval()

    @torch.no_grad()
    def disagreement(m):
        m.eval()
        x = data.test.images.float().div(255).sub(0.5).div(0.25)
        return float((m(x).softmax(1) - teacher(x).softmax(1)).abs().sum(1).mean())

    plain, kd = tiny(seed=2), tiny(seed=2)
    fit(plain, data, cfg(epochs=2), None, progress=False, log=lambda s: None)
    fit(kd, data, cfg(epochs=2, distill=0.9), None, progress=False, log=lambda s: None, teacher=teacher)
    assert disagreement(kd) < disagreement(plain)
    with pytest.raises(PrunekitError, match="needs a teacher"):
        fit(tiny(), data, cfg(distill=0.5), None, progress=False, log=lambda s: None)


def test_a_large_train_test_gap_is_reported_once():
    from prunekit.train.trainer import _gap_warning

    logs, warned = [], [False]
    _gap_warning({"train_top1": 40.0, "test_top1": 7.8}, 2, warned, logs.append)  # too early to say
    _gap_warning({"train_top1": 60.0, "test_top1": 45.0}, 3, warned, logs.append)  # within 30 points
    assert logs == []
    _gap_warning({"train_top1": 80.0, "test_top1": 12.0}, 3, warned, logs.append)
    _gap_warning({"train_top1": 90.0, "test_top1": 11.0}, 4, warned, logs.append)
    assert len(logs) == 1 and "data.augment" in logs[0] and "BatchNorm" in logs[0] and "12.0%" in logs[0]
    late, w2 = [], [False]
    _gap_warning({"train_top1": 80.0, "test_top1": 12.0}, 4, w2, late.append, epochs=40)  # a quarter not reached
    assert late == []


def test_resume_with_another_pruning_allocation_is_refused(tmp_path, data):
    """A checkpoint holds the masks of its allocation: a pruner with another allocation (same training config)
    must not silently continue from it."""
    from prunekit.pruning import OneShot, PruningConfig, prune_

    def run(allocation, resume):
        m = tiny()
        p = prune_(m, PruningConfig(schedule=OneShot(0.5), allocation=allocation), (1, 28, 28))
        fit(m, data, cfg(max_steps=3), tmp_path, callbacks=[p], resume=resume, progress=False, log=lambda s: None)

    run(None, False)
    run(None, True)  # the same setup resumes
    with pytest.raises(PrunekitError, match="different training config"):
        run({"blocks.0.pw.conv": 0.25}, True)
