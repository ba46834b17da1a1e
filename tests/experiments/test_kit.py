"""The experiment kit: one digits split, one fit, one accuracy, one checkpoint format,
one JSON writer."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from optprune.errors import CheckpointError, TrainingDivergedError, ValidationError
from optprune.experiments import (CHECKPOINT_FORMAT, Digits, accuracy, digits_vit, dumps, fit,
                                  load_checkpoint, load_digits_split, load_vit, save_checkpoint,
                                  save_vit, to_jsonable, vit_spec, write_json_atomic)
from optprune.nn.models import MLP

torch.set_num_threads(1)


# ------------------------------------------------------------------ data
def test_digits_split_is_the_one_convention():
    d = load_digits_split()
    assert isinstance(d, Digits)
    assert d.x_train.shape == (1347, 1, 8, 8) and d.x_test.shape == (450, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    x = torch.cat([d.x_train, d.x_test])
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x * 16, (x * 16).round())  # pixels / 16, exactly
    # stratified: every class's test share is within one image of 25%
    for c in range(10):
        n_te, n_tr = int((d.y_test == c).sum()), int((d.y_train == c).sum())
        assert abs(n_te - 0.25 * (n_te + n_tr)) <= 1
    again = load_digits_split()
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_train, d.y_train)
    other = load_digits_split(seed=1)
    assert not torch.equal(other.y_test, d.y_test)
    flat = load_digits_split(flat=True, dtype=torch.float64)
    assert flat.x_train.shape == (1347, 64) and flat.x_train.dtype == torch.float64
    assert torch.equal(flat.x_train.float(), d.flat().x_train)
    with pytest.raises(ValidationError, match="test_fraction"):
        load_digits_split(test_fraction=1.5)


# ------------------------------------------------------------------ fit
def _data(n=40, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _twins():
    torch.manual_seed(0)
    a, b = MLP(5, [7], 3), MLP(5, [7], 3)
    b.load_state_dict(a.state_dict())
    return a, b


def _same(a, b):
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def _reference_epochs(model, x, y, epochs, lr, bs, wd, seed):
    """The textbook loop fit's epochs mode must equal bit for bit."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    total = epochs * math.ceil(x.shape[0] / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], bs):
            idx = perm[i:i + bs]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def test_fit_epochs_equals_the_reference_loop():
    x, y = _data()
    a, b = _twins()
    h = fit(a, x, y, epochs=3, lr=1e-2, batch_size=16, weight_decay=1e-3, seed=4)
    _reference_epochs(b, x, y, 3, 1e-2, 16, 1e-3, 4)
    _same(a, b)
    assert h.steps == 9 and len(h.loss) == 9 and len(h.epoch_loss) == 3
    # the epoch mean is weighted by batch size (16, 16, 8)
    assert h.epoch_loss[0] == pytest.approx((16 * h.loss[0] + 16 * h.loss[1] + 8 * h.loss[2]) / 40)
    assert not a.training


def test_fit_steps_draws_random_batches_with_replacement():
    x, y = _data()
    a, b = _twins()
    seen = []
    fit(a, x, y, steps=5, lr=1e-2, batch_size=8, weight_decay=0.0, seed=2, schedule="constant",
        after_step=seen.append)
    assert seen == [0, 1, 2, 3, 4]
    g = torch.Generator().manual_seed(2)
    opt = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(5):
        idx = torch.randint(0, 40, (8,), generator=g)
        loss = nn.functional.cross_entropy(b(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    _same(a, b)


def test_fit_from_a_stream_with_batch_loss_and_logs():
    m = nn.Linear(3, 1)
    target = torch.tensor([[1.0], [2.0], [3.0]])

    def stream(t):
        g = torch.Generator().manual_seed(t)
        xb = torch.randn(8, 3, generator=g)
        return xb, xb @ target

    def mse(xb, yb, step, epoch):
        loss = ((m(xb) - yb) ** 2).mean()
        return loss, {"step": float(step)}

    h = fit(m, stream, steps=400, lr=5e-2, batch_loss=mse, weight_decay=0.0)
    assert [d["step"] for d in h.logs[:3]] == [0.0, 1.0, 2.0]
    assert torch.allclose(m.weight.detach(), target.T, atol=1e-2)
    assert h.loss[-1] < 1e-3 < h.loss[0]


def test_divergence_restores_the_last_good_state_and_writes_it(tmp_path):
    x, y = _data()
    x[7, 0] = float("nan")  # reached in every epoch, after some good steps of epoch 0
    torch.manual_seed(0)
    m = MLP(5, [7], 3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    path = tmp_path / "ck.pt"
    with pytest.raises(TrainingDivergedError, match="diverged at epoch 0") as info:
        fit(m, x, y, epochs=2, batch_size=4, checkpoint_path=path, spec=None)
    err = info.value
    assert err.epoch == 0 and err.checkpoint_path == str(path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]) and torch.equal(err.checkpoint[k], v)
    ck = load_checkpoint(path)
    assert ck.spec is None and ck.meta == {"step": 0, "epochs_completed": 0}
    for k, v in ck.state_dict.items():
        assert torch.equal(v, before[k])


def test_check_all_catches_a_bad_gradient_and_parameters_stay_finite():
    x, y = _data()
    m = nn.Linear(5, 3)
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        fit(m, x, y, epochs=3, lr=1e30, check_finite="all", schedule="constant")
    assert all(torch.isfinite(p).all() for p in m.parameters())

    m2 = nn.Linear(5, 3)
    hook = m2.weight.register_hook(lambda g: g * float("nan"))
    with pytest.raises(TrainingDivergedError, match="gradient of weight.grad"):
        fit(m2, x, y, steps=3, check_finite="all")
    hook.remove()


def test_steps_checkpoint_every_and_time_limit():
    x, y = _data()
    m = nn.Linear(5, 3)
    states = {}
    calls = {"n": 0}

    def loss_fn(out, t):
        calls["n"] += 1
        if calls["n"] == 5:  # step 4: a checkpoint was taken at its start
            states["at4"] = {k: v.clone() for k, v in m.state_dict().items()}
        return nn.functional.cross_entropy(out, t) * (float("nan") if calls["n"] > 6 else 1.0)

    with pytest.raises(TrainingDivergedError, match="diverged at step 6") as info:
        fit(m, x, y, steps=10, loss_fn=loss_fn, checkpoint_every=4)
    assert info.value.step == 6
    for k, v in m.state_dict().items():
        assert torch.equal(v, states["at4"][k])
    h = fit(nn.Linear(5, 3), x, y, steps=10_000, time_limit_s=0.0)
    assert h.stopped_by_time_limit and h.steps == 1


def test_frozen_parameters_are_not_trained_and_bad_arguments():
    x, y = _data()
    m = MLP(5, [7], 3)
    m[0].weight.requires_grad_(False)
    w0 = m[0].weight.clone()
    fit(m, x, y, epochs=1)
    assert torch.equal(m[0].weight, w0)
    with pytest.raises(ValidationError, match="exactly one of 'epochs' and 'steps'"):
        fit(m, x, y)
    with pytest.raises(ValidationError, match="schedule"):
        fit(m, x, y, epochs=1, schedule="linear")
    with pytest.raises(ValidationError, match="equal length"):
        fit(m, x, y[:3], epochs=1)
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValidationError, match="requires_grad"):
        fit(m, x, y, epochs=1)


def test_accuracy_counts_and_restores_the_mode():
    x, y = _data(n=37)
    m = MLP(5, [7], 3).train()
    with torch.no_grad():
        want = float((m(x).argmax(1) == y).sum()) / 37
    assert accuracy(m, x, y, batch_size=5) == want
    assert m.training


# ------------------------------------------------------------------ checkpoints
def _pruned_vit():
    vit = digits_vit(0)
    from optprune.nn import apply_mask, discover

    ss = discover(vit, (1, 8, 8))
    keep = np.ones(len(ss.groups), dtype=bool)
    keep[::3] = False
    return apply_mask(ss, keep)


def test_vit_round_trip_any_widths(tmp_path):
    vit = _pruned_vit().eval()
    path = save_vit(vit, tmp_path / "v.pt", epochs=3)
    back = load_vit(path)
    assert vit_spec(back) == vit_spec(vit)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), vit(x))
    assert load_checkpoint(path).meta == {"epochs": 3}
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_checkpoint_files_say_which_file(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(CheckpointError, match="none.pt.*does not exist"):
        load_checkpoint(missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt.*not a readable"):
        load_checkpoint(junk)
    good = save_vit(digits_vit(0), tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(cut)
    foreign = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), foreign)  # a pickled module: code, refused by weights_only
    with pytest.raises(CheckpointError, match="module.pt"):
        load_checkpoint(foreign)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="plain.pkl"):
        load_checkpoint(plain)
    other = tmp_path / "other.pt"
    torch.save({"format": "optprune.vit/1", "state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="other.pt.*'optprune.vit/1'"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="must hold a 'sprint' model"):
        load_checkpoint(good, kind="sprint")
    assert load_checkpoint(good).kind == "vit"
    with pytest.raises(CheckpointError, match="'kind'"):
        save_checkpoint(tmp_path / "x.pt", nn.Linear(2, 2), {"dim": 2})
    assert torch.load(good, weights_only=True)["format"] == CHECKPOINT_FORMAT


# ------------------------------------------------------------------ JSON
class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: float
    tags: tuple


def test_json_encoder_and_nonfinite_policy():
    obj = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True),
           "a": np.arange(3), "p": Path("/tmp/x"), "e": Color.RED, "s": {2, 1},
           "d": Point(1.5, (1, 2)), "inf": math.inf, "nan": [np.float64("nan")],
           "t": torch.tensor([1.0, 2.0]), 3: "int key"}
    got = json.loads(dumps(obj))
    assert got == {"i": 3, "f": 0.5, "b": True, "a": [0, 1, 2], "p": "/tmp/x", "e": "red",
                   "s": [1, 2], "d": {"x": 1.5, "tags": [1, 2]}, "inf": None, "nan": [None],
                   "t": [1.0, 2.0], "3": "int key"}
    with pytest.raises(ValidationError, match=r"\$\.row\[1\]"):
        to_jsonable({"row": [1.0, math.nan]}, nonfinite="error")
    with pytest.raises(TypeError, match="object"):
        dumps({"x": object()})


def test_atomic_writer_keeps_the_old_file_on_a_bad_value(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    with pytest.raises(ValidationError, match="does not exist"):
        write_json_atomic(tmp_path / "no" / "r.json", {})


def _writer(args):
    path, k = args
    for i in range(40):
        write_json_atomic(path, {"writer": k, "i": i, "pad": "x" * 5000})
    return k


def test_concurrent_writers_of_one_path_never_collide(tmp_path):
    path = str(tmp_path / "shared.json")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        assert sorted(pool.map(_writer, [(path, k) for k in range(4)])) == [0, 1, 2, 3]
    d = json.loads(Path(path).read_text())
    assert d["i"] == 39 and d["writer"] in range(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.json"]


def test_lazy_getattr():
    import optprune.experiments as ex

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ex.nope  # noqa: B018
    assert ex.fit is fit and "fit" in dir(ex)
