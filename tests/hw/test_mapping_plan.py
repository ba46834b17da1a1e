"""Layer -> GEMM mapping, staircase latency tables and the tile-aligned allocation."""

import itertools
import json

import numpy as np
import pytest
import torch

from optprune.cli import main
from optprune.errors import InfeasibleProblemError, ValidationError
from optprune.hw.mapping import (conv2d_gemm, latency_model, model_gemms, total_cycles,
                                 transformer_block_gemms)
from optprune.hw.plan import aligned_multiple, plan_allocation
from optprune.nn.models import MLP, SmallCNN, ViT
from optprune.nn.structures import discover

SHAPE = (1, 8, 8)
# physically smaller ViTs with 0 heads build empty Linear layers on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")


def _vit(heads=(4, 2), ffn=(24, 20), dim=16, head_dim=4, seed=0):
    torch.manual_seed(seed)
    return ViT(image_size=8, patch=2, dim=dim, heads=heads, head_dim=head_dim, ffn=ffn)


def _key(g):
    return (g.name, g.M, g.K, g.N, g.count)


def test_model_gemms_of_vit_equal_the_block_formulas():
    m = _vit()
    got = model_gemms(m, SHAPE, batch=3)
    want = [conv2d_gemm("patch_embed", 1, 16, (2, 2), (4, 4), batch=3)]
    for b, (h, f) in enumerate([(4, 24), (2, 20)]):
        want += transformer_block_gemms(f"blocks.{b}", 16, h, 4, f, seq_len=17, batch=3)
    want.append(model_gemms(m, SHAPE, 3)[-1])  # the classifier on the class token: M = batch
    assert want[-1].name == "head" and (want[-1].M, want[-1].K, want[-1].N) == (3, 16, 10)
    assert sorted(map(_key, got)) == sorted(map(_key, want))


def test_conv_as_im2col():
    m = SmallCNN(1, 6, n_blocks=1, n_classes=10)
    gs = {g.name: g for g in model_gemms(m, SHAPE, batch=2)}
    c = gs["blocks.0.conv1"]
    assert (c.M, c.K, c.N) == (2 * 8 * 8, 6 * 9, 6) and c.role == "conv"


@pytest.mark.parametrize("array,dataflow", [("4x4", "ws"), ("8x4", "os"), ("3x5", "is"),
                                            ("8x8", "ws")])
def test_tables_predict_the_cycles_of_the_physically_smaller_model(array, dataflow):
    """fixed + sum_slot table[k] equals the cycles of a ViT built with those widths."""
    m = _vit()
    s = discover(m, SHAPE)
    lm = latency_model(s, array, dataflow, batch=2)
    assert lm.dense_cycles == total_cycles(model_gemms(m, SHAPE, 2), array, dataflow)
    rng = np.random.default_rng(0)
    for _ in range(6):
        h = (int(rng.integers(0, 5)), int(rng.integers(0, 3)))
        f = (int(rng.integers(1, 25)), int(rng.integers(1, 21)))
        counts = {("blocks.0.attn", "head"): h[0], ("blocks.1.attn", "head"): h[1],
                  ("blocks.0.mlp.fc1", "ffn"): f[0], ("blocks.1.mlp.fc1", "ffn"): f[1]}
        small = _vit(heads=h, ffn=f)
        assert lm.cycles(counts) == total_cycles(model_gemms(small, SHAPE, 2), array, dataflow)


def test_ffn_staircase_steps_at_array_multiples():
    s = discover(_vit(ffn=(24, 20)), SHAPE)
    lm = latency_model(s, "4x4", "ws")
    ffn = next(x for x in lm.slots if x.layer == "blocks.0.mlp.fc1")
    t = ffn.table
    for k in range(1, ffn.width):
        assert (t[k + 1] == t[k]) == (k % 4 != 0)
    assert ffn.steps == list(range(0, 25, 4))
    assert aligned_multiple(ffn.steps, 24) == 4
    assert aligned_multiple([0, 3, 4], 4) is None


def test_gemm_cut_by_two_slots_is_refused():
    m = MLP(8, [6, 5], 3)
    s = discover(m, (8,))
    with pytest.raises(ValidationError, match="cut by two slots"):
        latency_model(s, "4x4", "ws")


def test_width_larger_than_layer_is_refused():
    lm = latency_model(discover(_vit(), SHAPE), "4x4", "ws")
    with pytest.raises(ValidationError, match=r"in \[0, 24\]"):
        lm.cycles({("blocks.0.mlp.fc1", "ffn"): 25})
    with pytest.raises(ValidationError, match="Unknown slot"):
        lm.cycles({("nope", "ffn"): 1})


def _brute(s, scores, lm, ok):
    """Best retained score over every subset of structures."""
    best, best_keep = -np.inf, None
    index = s.layer_kind_index()
    n = len(s.groups)
    for bits in itertools.product([False, True], repeat=n):
        keep = np.array(bits)
        counts = {k: int(keep[ix].sum()) for k, ix in index.items()}
        cyc = lm.cycles(counts)
        val = float(scores[keep].sum())
        if ok(cyc, val) and val > best + 1e-12:
            best, best_keep = val, keep
    return best, best_keep


@pytest.mark.parametrize("cap", [0.55, 0.7, 0.85])
def test_plan_equals_brute_force_and_alignment_is_free(cap):
    m = _vit(heads=(2, 1), ffn=(4, 4), dim=8, head_dim=4, seed=1)
    s = discover(m, SHAPE)
    assert len(s.groups) == 11
    scores = np.random.default_rng(int(cap * 100)).random(11)
    lm = latency_model(s, "2x2", "ws")
    limit = cap * lm.dense_cycles
    best, _ = _brute(s, scores, lm, lambda c, v: c <= limit + 1e-9)
    for align in (False, True):
        r = plan_allocation(s, scores, "2x2", "ws", latency_cap=cap, align=align, baselines=False)
        assert r.termination == "optimal"
        assert r.retained_importance == pytest.approx(best, rel=1e-9)
        assert r.cycles <= limit
        counts = {(x["layer"], x["kind"]): x["kept"] for x in r.layers}
        assert r.cycles == lm.cycles(counts)
    assert r.aligned == {"blocks.0.mlp.fc1|ffn": 2, "blocks.1.mlp.fc1|ffn": 2}


def test_plan_min_cycles_above_importance_floor_equals_brute_force():
    m = _vit(heads=(2, 1), ffn=(4, 4), dim=8, head_dim=4, seed=2)
    s = discover(m, SHAPE)
    scores = np.random.default_rng(5).random(11)
    lm = latency_model(s, "2x2", "os")
    floor = 0.6 * scores.sum()
    best_cyc = np.inf
    index = s.layer_kind_index()
    for bits in itertools.product([False, True], repeat=11):
        keep = np.array(bits)
        if scores[keep].sum() >= floor - 1e-12:
            best_cyc = min(best_cyc, lm.cycles({k: int(keep[ix].sum()) for k, ix in index.items()}))
    r = plan_allocation(s, scores, "2x2", "os", importance_floor=0.6, align=False)
    assert r.cycles == best_cyc
    assert r.retained_importance >= floor - 1e-9


def test_plan_bad_inputs():
    s = discover(_vit(), SHAPE)
    sc = np.ones(len(s.groups))
    with pytest.raises(ValidationError, match="exactly one of"):
        plan_allocation(s, sc, "4x4")
    with pytest.raises(ValidationError, match="latency cap"):
        plan_allocation(s, sc, "4x4", latency_cap=0.001)
    with pytest.raises(ValidationError, match="scores"):
        plan_allocation(s, sc[:-1], "4x4", latency_cap=0.5)
    with pytest.raises(ValidationError, match="dataflow"):
        plan_allocation(s, sc, "4x4", dataflow="xx", latency_cap=0.5)
    with pytest.raises(InfeasibleProblemError):
        plan_allocation(s, sc, "4x4", latency_cap=0.3, min_keep=0.9)


def test_cli_plan_json(capsys):
    assert main(["systolic", "plan", "--model", "vit", "--array", "8x8",
                 "--latency-cap", "0.6", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["termination"] == "optimal" and d["cycles"] <= 0.6 * d["dense_cycles"]
    assert d["speedup"] == pytest.approx(d["dense_cycles"] / d["cycles"])
    assert all(r["kept"] % 8 == 0 for r in d["layers"] if r["kind"] == "ffn")


def test_mapping_bad_inputs():
    with pytest.raises(ValidationError, match="seq_len"):
        transformer_block_gemms("b", 16, 2, 4, 32, seq_len=0)
    with pytest.raises(ValidationError, match="heads"):
        transformer_block_gemms("b", 16, -1, 4, 32, seq_len=4)
    with pytest.raises(ValidationError, match="groups"):
        conv2d_gemm("c", 6, 4, (3, 3), (8, 8), groups=4)
    with pytest.raises(ValidationError, match="input_shape"):
        model_gemms(_vit(), (0, 8, 8))
    with pytest.raises(ValidationError, match="could not run"):
        model_gemms(_vit(), (3, 8, 8))
    g = conv2d_gemm("c", 8, 4, (3, 3), (5, 5), batch=2, groups=2)
    assert (g.M, g.K, g.N, g.count) == (50, 36, 2, 2)


def test_block_gemms_count_heads_products_per_sample_and_head():
    gs = {g.name: g for g in transformer_block_gemms("b", 32, 4, 8, 64, seq_len=10, batch=3)}
    assert (gs["b.attn.q"].M, gs["b.attn.q"].K, gs["b.attn.q"].N) == (30, 32, 32)
    assert (gs["b.attn.score"].M, gs["b.attn.score"].K, gs["b.attn.score"].N,
            gs["b.attn.score"].count) == (10, 8, 10, 12)
    assert sum(g.macs for g in gs.values()) == 3 * (4 * 10 * 32 * 32 + 2 * 4 * 10 * 10 * 8
                                                    + 2 * 10 * 32 * 64)
