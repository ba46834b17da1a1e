"""LoRAShear-style progressive pruning of a BERT encoder with LoRA adapters (base
frozen): the adapter entries of removed heads and FFN channels shrink with their
groups to exactly zero, merging the adapters leaves the function unchanged, and the
physically pruned model computes what the merged (zeroed) model computes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("peft")

from optprune.errors import UnsupportedModuleError, ValidationError  # noqa: E402
from optprune.nn.hf import (TokenIdsEncoder, bert_structures, embedding_distill_loss,  # noqa: E402
                            prune_bert)
from optprune.train_prune import (add_lora, merge_lora, plan_removal,  # noqa: E402
                                  progressive_shrink, removal_masks)

SEQ = 8


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertModel(cfg).eval()


def token_ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 60, (n, SEQ), generator=g)
    x[: n // 2, -2:] = 0  # padding (pad id 0) in half of the sequences
    return x.float()


def cos_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(out, target, dim=-1)).mean()


@pytest.fixture(scope="module")
def planned():
    torch.set_num_threads(1)
    bert = tiny_bert()
    x = token_ids(64, 0)
    ss = bert_structures(bert, seq_len=SEQ)
    with torch.no_grad():
        # targets of another (perturbed) model, so that training has something to learn
        teacher = copy.deepcopy(bert)
        for p in teacher.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
        y = bert_structures(teacher, seq_len=SEQ).model(x)
    plan = plan_removal(None, x, y, 0.35, structures=ss, protect_fraction=0.25,
                        importance="taylor", importance_kw={"loss_fn": embedding_distill_loss})
    kinds = {g.kind for g, k in zip(plan.structures.groups, plan.keep) if not k}
    assert kinds == {"head", "ffn"}, kinds  # both kinds removed: rows and columns exercised
    return bert, x, y, plan


@pytest.mark.parametrize("targets", [("query", "value"), ("query", "key", "value", "dense")])
def test_lora_bert_progressive_zeroes_adapters_merges_and_prunes_exactly(planned, targets):
    bert, x, y, plan = planned
    model = copy.deepcopy(bert)
    pm = add_lora(model, rank=4, targets=targets)
    enc = TokenIdsEncoder(model)
    masks = {n: (t, m) for n, t, m in removal_masks(plan.structures, plan.keep, enc)}
    removed_heads = [(g.layer, g.index) for g, k in zip(plan.structures.groups, plan.keep)
                     if not k and g.kind == "head"]
    # every q/v adapter of a layer with a removed head has exactly that head's B rows masked
    for layer in sorted({lay for lay, _ in removed_heads}):
        heads = [h for lay, h in removed_heads if lay == layer]
        rows = sorted(r for h in heads for r in range(h * 8, (h + 1) * 8))
        for proj in ("query", "value"):
            t, m = masks[f"{layer}.self.{proj}.lora_B.default.weight"]
            assert np.flatnonzero(m.any(1).numpy()).tolist() == rows and m[rows].all()
    adapters = [n for n in masks if "lora_" in n]
    if "dense" in targets:  # consumers' input columns live in lora_A
        assert any("output.dense.lora_A" in n for n in adapters)
        assert any("intermediate.dense.lora_B" in n for n in adapters)
    frozen_before = {n: p.detach().clone() for n, p in enc.named_parameters() if "lora_" not in n}
    period = 6
    out = progressive_shrink(enc, plan, x, y, period, lr=1e-2, batch_size=16, loss_fn=cos_loss)
    norms = out["removed_norms"]
    assert len(norms) == period and norms[0] > 0 and norms[-1] == 0.0
    for n in adapters:
        t, m = masks[n]
        assert m.any() and torch.count_nonzero(t.detach()[m]) == 0
        if n.split(".lora_")[1].startswith("B"):  # trained: kept B rows left their zero init
            assert torch.count_nonzero(t.detach()[~m]) > 0
    for n, p in enc.named_parameters():  # base frozen: only the shrink touched it
        if "lora_" not in n:
            m = masks[n][1] if n in masks else torch.zeros(p.shape, dtype=torch.bool)
            assert torch.equal(p.detach()[~m], frozen_before[n][~m])

    xt = token_ids(16, 1)
    hidden = TokenIdsEncoder(model, output="hidden")
    hidden.eval()
    with torch.no_grad():
        with_adapters = hidden(xt)
    plain = merge_lora(pm)
    assert plain is model and type(model.encoder.layer[0].attention.self.query) is torch.nn.Linear
    ss = bert_structures(model, seq_len=SEQ)
    with torch.no_grad():
        merged = TokenIdsEncoder(model, output="hidden")(xt)
    assert torch.allclose(merged, with_adapters, atol=1e-5)
    for n, t, m in removal_masks(ss, plan.keep, ss.model):
        assert m.any() and torch.count_nonzero(t.detach()[m]) == 0, n
    small = prune_bert(copy.deepcopy(model), plan.keep, ss)
    assert sum(p.numel() for p in small.parameters()) == plan.predicted_params
    with torch.no_grad():
        pruned = TokenIdsEncoder(small, output="hidden")(xt)
    assert torch.allclose(pruned, merged, atol=1e-5)


def test_lora_wrapped_bert_errors_are_clear(planned):
    bert = copy.deepcopy(planned[0])
    with pytest.raises(ValidationError, match="names of Linear layers"):
        add_lora(bert, rank=2, targets=("q", "v"))
    with pytest.raises(ValidationError, match="positive integer"):
        add_lora(bert, rank=0, targets=("query",))
    add_lora(bert, rank=2, targets=("query", "value"))
    with pytest.raises(UnsupportedModuleError, match="LoRA-wrapped"):
        bert_structures(bert, seq_len=SEQ)
