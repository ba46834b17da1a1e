"""Calibration inputs: every accepted form yields the same samples, follows the model's
dtype, runs the model, and bad input gets one clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from optprune.errors import ValidationError
from optprune.nn.calib import (batches, consumer_stats, model_output, n_samples, place,
                               run_model, sample_input)


class KwModel(nn.Module):
    """A model with keyword inputs, as Hugging Face models have."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1).to(h.dtype)
        return {"logits": self.lin(h).mean(1), "last_hidden_state": h}


def _all(data, **kw):
    xs, ys = [], []
    for x, y in batches(data, **kw):
        xs.append(x)
        ys.append(y)
    return xs, ys


def test_every_form_of_tensor_data_yields_the_same_samples():
    x = torch.randn(10, 3)
    y = torch.arange(10)
    ref = x.double()
    forms = [(x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=4),
             [(x[:6], y[:6]), (x[6:], y[6:])], (x.numpy(), y.numpy())]
    for data in forms:
        xs, ys = _all(data, input_shape=(3,), batch_size=4, dtype=torch.float64)
        assert torch.equal(torch.cat(xs), ref)
        assert torch.equal(torch.cat(ys), y)
    xs, ys = _all(x, input_shape=(3,), batch_size=3)
    assert [t.shape[0] for t in xs] == [3, 3, 3, 1] and ys == [None] * 4


def test_dicts_lists_of_dicts_and_dict_loaders():
    ids = torch.randint(0, 10, (7, 5))
    mask = torch.ones(7, 5, dtype=torch.long)
    labels = torch.arange(7) % 3
    forms = [{"input_ids": ids, "attention_mask": mask, "labels": labels},
             ({"input_ids": ids, "attention_mask": mask}, labels),
             [{"input_ids": ids[:4], "attention_mask": mask[:4], "labels": labels[:4]},
              {"input_ids": ids[4:], "attention_mask": mask[4:], "labels": labels[4:]}],
             DataLoader([{"input_ids": a, "attention_mask": b, "labels": c}
                         for a, b, c in zip(ids, mask, labels)], batch_size=4)]
    model = KwModel().double()
    ref = model_output(model(ids, mask))
    for data in forms:
        xs, ys = _all(data, batch_size=4, need_targets=True, dtype=torch.float64)
        assert all(set(x) == {"input_ids", "attention_mask"} for x in xs)
        assert torch.equal(torch.cat([x["input_ids"] for x in xs]), ids)
        assert xs[0]["input_ids"].dtype == torch.long  # integer inputs keep their dtype
        assert torch.equal(torch.cat(ys), labels)
        out = torch.cat([model_output(run_model(model, x)) for x in xs])
        assert torch.allclose(out, ref)
    assert n_samples(forms[0]) == 7
    assert sample_input(forms[0], 2)["input_ids"].shape == (2, 5)


def test_floating_inputs_follow_the_model_dtype():
    model = nn.Linear(3, 2).double()
    stats = consumer_stats(model, [""], torch.randn(5, 3), (3,))
    assert stats[""].n == 5
    d = place({"pixel_values": torch.randn(2, 3), "ids": torch.ones(2, dtype=torch.long)},
              torch.float64)
    assert d["pixel_values"].dtype == torch.float64 and d["ids"].dtype == torch.long


def test_model_output_picks_the_main_tensor():
    t = torch.randn(2, 3)
    assert model_output(t) is t
    assert model_output({"last_hidden_state": t}) is t
    assert model_output({"loss": None, "logits": t, "last_hidden_state": t + 1}) is t
    assert model_output((t, None)) is t
    with pytest.raises(ValidationError, match="must hold a tensor"):
        model_output({"a": 1})


def test_bad_input_is_named():
    with pytest.raises(ValidationError, match="dtype"):
        list(batches(torch.zeros(4, 3, dtype=torch.long), (3,)))
    with pytest.raises(ValidationError, match="shape of the calibration inputs"):
        list(batches(torch.zeros(4, 5), (3,)))
    with pytest.raises(ValidationError, match="first dimensions"):
        list(batches({"input_ids": torch.zeros(4, 3), "attention_mask": torch.zeros(5, 3)}))
    with pytest.raises(ValidationError, match="must include targets"):
        list(batches({"input_ids": torch.zeros(4, 3)}, need_targets=True))
    with pytest.raises(ValidationError, match="must be a tensor X"):
        list(batches(42))
    with pytest.raises(ValidationError, match="must run KwModel"):
        run_model(KwModel(), {"pixel_values": torch.zeros(2, 3)}, "the test")
    with pytest.raises(ValidationError, match="number of calibration batches"):
        list(batches([]))
