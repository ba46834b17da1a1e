"""SASP tile pruning: tile-skipping execution, exactness of the tile choice, masks."""

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optprune.cli import main
from optprune.errors import InfeasibleProblemError, ValidationError
from optprune.hw.mapping import total_cycles
from optprune.hw.tiles import (TileGrid, apply_tile_masks, block_mask, finetune_masked,
                               sasp_prune, threshold_keep, tile_grids, tile_importance,
                               tiled_linear)
from optprune.nn.models import ViT

SHAPE = (1, 8, 8)


def _tiny(seed=0, ffn=8):
    torch.manual_seed(seed)
    return ViT(image_size=8, patch=2, dim=8, heads=(1,), head_dim=4, ffn=ffn)


@settings(max_examples=25, deadline=None)
@given(K=st.integers(1, 9), N=st.integers(1, 9), M=st.integers(1, 5), R=st.integers(1, 4),
       C=st.integers(1, 4), seed=st.integers(0, 1000))
def test_tile_skipping_execution_equals_masked_dense_matmul(K, N, M, R, C, seed):
    rng = np.random.default_rng(seed)
    g = TileGrid("x", "qkv", N, K, M, R, C)
    keep = rng.random(g.shape) < 0.6
    W, x, b = rng.standard_normal((N, K)), rng.standard_normal((M, K)), rng.standard_normal(N)
    out, cycles = tiled_linear(x, W, keep, R, C, bias=b)
    mask = block_mask(g, keep).double().numpy()
    np.testing.assert_allclose(out, x @ (W * mask).T + b, atol=1e-12)
    assert cycles == int(keep.sum()) * g.cycles_per_tile  # linear in kept tiles


def test_block_mask_matches_tile_definition():
    g = TileGrid("x", "qkv", out_features=7, in_features=5, tokens=3, rows=2, cols=3)
    assert g.shape == (3, 3)
    keep = np.random.default_rng(0).random(g.shape) < 0.5
    mask = block_mask(g, keep).numpy()
    for n in range(7):
        for k in range(5):
            assert mask[n, k] == keep[k // 2, n // 3]  # W^T tile (a, b) = W[bC:, aR:]


def test_masked_model_equals_zeroed_weights_and_cycles_add_up():
    m = _tiny()
    grids, dense = tile_grids(m, SHAPE, "4x4")
    sc = tile_importance(m, grids)
    r = sasp_prune(grids, dense, sc, prune_rate=0.4)
    pm = apply_tile_masks(m, grids, r.keep)
    mods, pmods = dict(m.named_modules()), dict(pm.named_modules())
    for g in grids:
        w = mods[g.module].weight.detach()
        np.testing.assert_array_equal(pmods[g.module].weight.detach().numpy(),
                                      (w * block_mask(g, r.keep[g.module])).numpy())
    x = torch.randn(5, *SHAPE)
    assert not torch.equal(m(x), pm(x))  # original untouched, copy pruned
    assert r.kept_tiles <= 0.6 * r.n_tiles + 1e-9
    assert r.fixed_cycles == total_cycles(dense, "4x4", "ws")
    assert r.cycles == r.fixed_cycles + sum(int(r.keep[g.module].sum()) * g.cycles_per_tile
                                            for g in grids)


def test_exact_tile_choice_equals_brute_force_with_unequal_costs_and_bounds():
    m = _tiny(1, ffn=4)
    # prune the classifier too: its GEMM has M = 1 token, so its tiles are cheaper
    grids, dense = tile_grids(m, SHAPE, "4x4", include=lambda n: n != "patch_embed")
    n = sum(g.n_tiles for g in grids)
    assert n == 3 * 2 + 2 + 2 + 2 + 6 and len({g.cycles_per_tile for g in grids}) == 2
    rng = np.random.default_rng(7)
    sc = {g.module: rng.random(g.shape) for g in grids}
    flat_s = np.concatenate([sc[g.module].ravel() for g in grids])
    flat_c = np.concatenate([np.full(g.n_tiles, g.cycles_per_tile) for g in grids])
    kinds = np.concatenate([[g.kind] * g.n_tiles for g in grids])
    owner = np.concatenate([[i] * g.n_tiles for i, g in enumerate(grids)])
    fixed = total_cycles(dense, "4x4", "ws")
    dense_cyc = fixed + flat_c.sum()
    max_rate = {"qkv": 0.5, "ffn_in": 0.5}
    cap = 0.75
    # brute force over all 2^19 keep vectors, vectorized in chunks
    best = -np.inf
    bits = np.array(list(itertools.product([0, 1], repeat=10)), dtype=bool)  # first 10 tiles
    rest = np.array(list(itertools.product([0, 1], repeat=n - 10)), dtype=bool)
    for r_ in rest:
        keep = np.hstack([bits, np.broadcast_to(r_, (bits.shape[0], r_.size))])
        ok = fixed + keep @ flat_c <= cap * dense_cyc + 1e-9
        for i, g in enumerate(grids):
            lim = max_rate.get(g.kind)
            if lim is not None:
                ok &= keep[:, owner == i].sum(1) >= np.ceil((1 - lim) * g.n_tiles - 1e-9)
        if ok.any():
            best = max(best, float((keep[ok] @ flat_s).max()))
    r = sasp_prune(grids, dense, sc, cycle_cap=cap, max_rate=max_rate)
    assert r.termination == "optimal"
    assert r.retained_importance == pytest.approx(best, rel=1e-9)
    assert r.cycles <= cap * r.dense_cycles
    t = sasp_prune(grids, dense, sc, cycle_cap=cap, max_rate=max_rate, method="threshold")
    assert t.retained_importance <= r.retained_importance + 1e-12
    assert kinds.size == n and "other" in set(kinds)


def test_threshold_drops_lowest_within_bounds():
    sc = {"a": np.array([[1.0, 5.0]]), "b": np.array([[2.0, 3.0], [0.5, 4.0]])}
    keep = threshold_keep(sc, 2)
    assert keep["a"].tolist() == [[False, True]] and keep["b"].tolist() == [[True, True],
                                                                            [False, True]]
    keep = threshold_keep(sc, 3, max_rate={"ffn_in": 0.25}, kinds={"b": "ffn_in"})
    # b may lose 1 of its 4 tiles, so the walk skips b and drops a whole
    assert int((~keep["b"]).sum()) == 1 and int((~keep["a"]).sum()) == 2


def test_taylor_tile_importance_is_first_order_change():
    m = _tiny(2)
    grids, _ = tile_grids(m, SHAPE, "4x4")
    X, y = torch.rand(12, *SHAPE), torch.randint(0, 10, (12,))
    sc = tile_importance(m, grids, "taylor", (X, y), SHAPE)
    g = grids[0]
    w = dict(m.named_modules())[g.module].weight
    loss = torch.nn.functional.cross_entropy(m(X), y)
    (gr,) = torch.autograd.grad(loss, [w])
    want = abs(float((w.detach() * gr)[0:4, 0:4].sum()))  # tile (0, 0) of W^T = W[0:C, 0:R]
    assert sc[g.module][0, 0] == pytest.approx(want, rel=1e-6)
    norm = tile_importance(m, grids, normalize="matrix")
    assert all(v.mean() == pytest.approx(1.0) for v in norm.values())


def test_bad_inputs():
    m = _tiny()
    with pytest.raises(ValidationError, match="does not fit"):
        tile_grids(m, SHAPE, "4x4", tile="8x8")
    grids, dense = tile_grids(m, SHAPE, "4x4")
    sc = tile_importance(m, grids)
    with pytest.raises(ValidationError, match="exactly one"):
        sasp_prune(grids, dense, sc)
    with pytest.raises(ValidationError, match="max_rate key"):
        sasp_prune(grids, dense, sc, prune_rate=0.2, max_rate={"attn": 0.5})
    with pytest.raises(ValidationError, match="prune_rate"):
        sasp_prune(grids, dense, sc, prune_rate=1.5)
    with pytest.raises(ValidationError, match="tile scores"):
        sasp_prune(grids, dense, {k: v[:1] for k, v in sc.items()}, prune_rate=0.2)
    with pytest.raises(InfeasibleProblemError, match="max_rate"):
        sasp_prune(grids, dense, sc, prune_rate=0.9, max_rate={k: 0.2 for k in
                                                                ("qkv", "proj", "ffn_in", "ffn_out")})
    with pytest.raises(ValidationError, match="tile keep matrix"):
        block_mask(grids[0], np.ones((1, 1), dtype=bool))
    with pytest.raises(ValidationError, match="Taylor"):
        tile_importance(m, grids, "taylor")


def test_cli_sasp_json(capsys):
    assert main(["systolic", "sasp", "--model", "vit", "--array", "16x16",
                 "--prune-rate", "0.25", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["prune_rate"] >= 0.25 and d["speedup"] > 1
    assert d["cycles"] == d["fixed_cycles"] + sum(r["cycles"] for r in d["per_matrix"])


def test_threshold_with_cycle_cap_meets_the_cap_within_bounds():
    m = _tiny(3)
    grids, dense = tile_grids(m, SHAPE, "4x4", include=lambda n: n != "patch_embed")
    sc = tile_importance(m, grids)
    bounds = {"qkv": 0.5, "ffn_in": 0.5, "ffn_out": 0.5, "proj": 0.5}
    for cap in (0.75, 0.85, 0.95):
        t = sasp_prune(grids, dense, sc, cycle_cap=cap, max_rate=bounds, method="threshold")
        e = sasp_prune(grids, dense, sc, cycle_cap=cap, max_rate=bounds)
        assert t.cycles <= cap * t.dense_cycles and e.cycles <= cap * e.dense_cycles
        assert t.retained_importance <= e.retained_importance + 1e-12
        for row in t.per_matrix:
            if row["kind"] in bounds:
                assert row["prune_rate"] <= 0.5 + 1e-9
    with pytest.raises(InfeasibleProblemError, match="threshold"):
        sasp_prune(grids, dense, sc, prune_rate=0.9, max_rate=bounds, method="threshold")


def test_masked_fine_tuning_keeps_dropped_tiles_at_zero_and_trains_the_rest():
    m = _tiny(1)
    grids, dense = tile_grids(m, SHAPE, "4x4")
    r = sasp_prune(grids, dense, tile_importance(m, grids), prune_rate=0.3)
    pm = apply_tile_masks(m, grids, r.keep)
    masks = {g.module: block_mask(g, r.keep[g.module]) for g in grids}
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, *SHAPE, generator=g), torch.randint(0, 10, (64,), generator=g)
    finetune_masked(pm, masks, x, y, epochs=2, lr=1e-2)
    mods = dict(pm.named_modules())
    for name, mk in masks.items():
        w = mods[name].weight
        assert torch.all(w[mk == 0] == 0)  # dropped tiles: exactly zero after every step
        assert not torch.equal(w, before[f"{name}.weight"])  # kept tiles trained
    with pytest.raises(ValidationError, match="modules of the model"):
        finetune_masked(pm, {"nope": masks[grids[0].module]}, x, y)
