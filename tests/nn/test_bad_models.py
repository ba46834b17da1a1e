"""Bad input to one-call pruning: a model with nothing prunable, an architecture
discovery cannot follow, inputs that do not run the model. One clear error each, and
the model is exactly as it was (weights, buffers, training mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optprune
from optprune.errors import UnsupportedModuleError, ValidationError

torch.set_num_threads(1)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, model.training


def _unchanged(model, snap):
    state, training = snap
    assert model.training == training
    now = model.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert torch.equal(now[k], v), k


class WithRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.rnn = nn.RNN(6, 5, batch_first=True)
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x):
        h, _ = self.rnn(torch.relu(self.inp(x)))
        return self.fc2(torch.relu(self.fc1(h[:, -1])))


def test_nothing_prunable_is_one_clear_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    snap = _snapshot(model)
    with pytest.raises(ValidationError, match=r"Nothing in Sequential is prunable.*0: model output"):
        optprune.prune(model, "magnitude", 0.5, data=torch.randn(5, 4))
    _unchanged(model, snap)


def test_an_unfollowable_module_is_named_with_its_exclude():
    torch.manual_seed(0)
    model = WithRNN().train()
    snap = _snapshot(model)
    x = torch.randn(3, 7, 4)
    with pytest.raises(UnsupportedModuleError, match=r"rnn \(RNN\).*exclude=\[") as exc:
        optprune.prune(model, "magnitude", 0.8, data=x)
    assert str(exc.value).startswith("1 module(s) of WithRNN")
    _unchanged(model, snap)
    pruned, rep = optprune.prune(model, "magnitude", 0.8, data=x, exclude=["rnn"],
                                 baselines=False)
    # The RNN reads inp's outputs and writes fc1's inputs: both stay dense; fc1's
    # neurons are still pruned.
    assert {g.split(":")[0] for g in rep.kept_ids} == {"fc1"}
    assert pruned.inp.out_features == 6 and pruned.fc1.out_features < 8
    assert rep.after == rep.predicted
    _unchanged(model, snap)


def test_inputs_that_do_not_run_the_model():
    transformers = pytest.importorskip("transformers")
    from optprune.nn import zoo

    model, x = zoo.build("bert")
    model.train()
    snap = _snapshot(model)
    with pytest.raises(ValidationError, match=r"inputs of structure discovery must run BertModel"):
        optprune.prune(model, "magnitude", 0.5, data={"pixel_values": torch.randn(2, 3, 8, 8)})
    with pytest.raises(ValidationError, match=r"must run BertModel"):
        optprune.prune(model, "magnitude", 0.5, data=torch.randn(2, 8))
    _unchanged(model, snap)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    snap = _snapshot(mlp)
    with pytest.raises(ValidationError, match=r"must run Sequential.*\(2, 5\)"):
        optprune.prune(mlp, "magnitude", 0.5, data=torch.randn(2, 5))
    with pytest.raises(ValidationError, match="must be data .* or input_shape"):
        optprune.prune(mlp, "magnitude", 0.5)
    _unchanged(mlp, snap)
    assert transformers is not None
