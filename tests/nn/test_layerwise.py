"""Layerwise selection (cardinality-constrained ridge least squares) against independent
computations on the raw activations: numpy lstsq on the (ridge-augmented) system, brute
force over every keep set, every single exchange evaluated from scratch."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optprune.errors import ValidationError
from optprune.nn.layerwise import (LayerStats, column_groups, greedy_elimination,
                                   greedy_selection, heuristic_selection, refit,
                                   selection_error, swap_search)

torch.set_num_threads(1)


def _layer(seed, n=120, d=10, m=4, corr=True):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if corr:
        X = X @ rng.normal(size=(d, d)) + rng.normal(size=d)
    W = rng.normal(size=(m, d))
    return X, W


def _cols(groups, keep):
    return np.sort(np.concatenate([groups[g] for g in np.flatnonzero(keep)] +
                                  [np.zeros(0, dtype=int)])).astype(int)


def _lstsq(X, Y, W, groups, keep, lam):
    """(B, f) of  min ||Y - X_J B||^2 + lam ||B - W_J^T||^2  by lstsq on the augmented system."""
    J = _cols(groups, keep)
    if J.size == 0:
        return np.zeros((0, Y.shape[1])), float(np.sum(Y * Y))
    A = np.vstack([X[:, J], np.sqrt(lam) * np.eye(J.size)])
    T = np.vstack([Y, np.sqrt(lam) * W[:, J].T])
    B = np.linalg.lstsq(A, T, rcond=None)[0]
    return B, float(np.sum((A @ B - T) ** 2))


def _random_keeps(G, widths, seed=0):
    rng = np.random.default_rng(seed)
    for w in widths:
        keep = np.zeros(G, dtype=bool)
        keep[rng.choice(G, w, replace=False)] = True
        yield keep


def _masks(G, w):
    for S in itertools.combinations(range(G), w):
        keep = np.zeros(G, dtype=bool)
        keep[list(S)] = True
        yield keep


# ------------------------------------------------------------------ statistics
def test_stats_from_batches_streams_and_matches_explicit_target():
    X, W = _layer(0)
    b = np.linspace(-1, 1, W.shape[0])
    one = LayerStats.from_batches([X], W, bias=b)
    Xt = torch.from_numpy(X)  # torch tensors are accepted as they are
    parts = LayerStats.from_batches([(Xt[:50], None), (X[50:].reshape(7, 10, 10), None)], W, bias=b)
    Y = X @ W.T + b
    given_y = LayerStats.from_batches([(X, Y)], W, bias=b)
    for s in (parts, given_y):
        assert s.n == one.n == 120 and s.has_intercept and s.d == 11
        np.testing.assert_allclose(s.gxx, one.gxx, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(s.gxy, one.gxy, rtol=1e-10, atol=1e-8)
        assert s.yy == pytest.approx(one.yy, rel=1e-10)
    Xa = np.hstack([X, np.ones((120, 1))])
    np.testing.assert_allclose(one.gxy, Xa.T @ Y, rtol=1e-10, atol=1e-8)
    g = LayerStats.from_gram(X.T @ X, W, n=120)
    np.testing.assert_allclose(g.gxy, X.T @ (X @ W.T), rtol=1e-10)


def test_refit_lam0_equals_numpy_lstsq_and_ridge_equals_augmented_lstsq():
    X, W = _layer(1)
    Y = X @ W.T
    s = LayerStats.from_batches([X], W)
    groups = column_groups(10)
    keep = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    B = refit(s, groups, keep, lam=0.0)
    ref = np.linalg.lstsq(X[:, keep], Y, rcond=None)[0]
    np.testing.assert_allclose(B, ref, rtol=1e-7, atol=1e-8)
    for lam in (0.3, 40.0):
        Bl = refit(s, groups, keep, lam=lam)
        ref_l, f_ref = _lstsq(X, Y, W, groups, keep, lam)
        np.testing.assert_allclose(Bl, ref_l, rtol=1e-9, atol=1e-10)
        assert selection_error(s, groups, keep, lam) == pytest.approx(f_ref, rel=1e-9, abs=1e-9 * s.yy)


def test_target_from_another_input_and_intercept():
    """X from a pruned model, Y the dense layer's output on the dense inputs."""
    rng = np.random.default_rng(2)
    Xd, W = _layer(2, d=8)
    b = rng.normal(size=W.shape[0])
    Xp = Xd + 0.3 * rng.normal(size=Xd.shape)
    Y = Xd @ W.T + b
    s = LayerStats.from_batches([(Xp[:70], Y[:70]), (Xp[70:], Y[70:])], W, bias=b)
    groups = column_groups(4, 2)  # "heads" of 2 columns; column 8 (the constant) is always kept
    Xa, Wa = np.hstack([Xp, np.ones((Xp.shape[0], 1))]), np.hstack([W, b[:, None]])
    ga = groups + [np.array([8])]
    for lam in (0.0, 2.0):
        for keep in _masks(4, 2):
            B = refit(s, groups, keep, lam)
            ref, f = _lstsq(Xa, Y, Wa, ga, np.append(keep, True), lam)
            np.testing.assert_allclose(B, ref, rtol=1e-7, atol=1e-8)
            assert B.shape == (5, W.shape[0])  # 2 heads x 2 columns + the bias row
            assert selection_error(s, groups, keep, lam) == pytest.approx(f, rel=1e-8, abs=1e-10 * s.yy)


# ------------------------------------------------------------------ greedy curve
@pytest.mark.parametrize("k,lam", [(1, 0.0), (1, 3.0), (2, 0.0), (3, 10.0)])
def test_greedy_curve_equals_error_recomputed_from_scratch(k, lam):
    X, W = _layer(3, n=200, d=12, m=6)
    s = LayerStats.from_batches([X], W)
    groups = column_groups(12 // k, k)
    c = greedy_elimination(s, groups, lam)
    G = len(groups)
    assert sorted(c.order.tolist()) == list(range(G)) and c.error.shape == (G + 1,)
    Y = X @ W.T
    for w in range(G + 1):
        keep = c.keep_mask(w)
        assert keep.sum() == w
        _, f = _lstsq(X, Y, W, groups, keep, lam)
        assert c.error[w] == pytest.approx(f, rel=1e-8, abs=1e-10 * s.yy)
    # each step removes the group whose removal costs least (brute force over the step)
    for step in range(G):
        keep = c.keep_mask(G - step)
        best = min(selection_error(s, groups, keep & (np.arange(G) != g), lam)
                   for g in np.flatnonzero(keep))
        assert c.error[G - step - 1] == pytest.approx(best, rel=1e-9, abs=1e-10 * s.yy)
    assert c.keep_mask(G).all() and not c.keep_mask(0).any()


def test_greedy_is_exact_at_the_ends_and_json_ready():
    import json

    X, W = _layer(4)
    s = LayerStats.from_batches([X], W)
    c = greedy_elimination(s, column_groups(10), 1.0)
    assert c.error[0] == pytest.approx(s.yy)  # nothing kept: the whole output is lost
    json.dumps(c.to_dict())


def test_greedy_with_dead_and_duplicate_columns_lam0():
    """Dead ReLU units (zero columns) and duplicates make X^T X singular: lam = 0 is solved
    with the jitter and the curve still equals the recomputed errors."""
    X, W = _layer(5, d=9)
    X[:, 2] = 0.0
    X[:, 5] = X[:, 1]
    s = LayerStats.from_batches([X], W)
    groups = column_groups(9)
    c = greedy_elimination(s, groups, 0.0)
    assert c.ridge > 0 and c.lam == 0.0
    assert 2 in c.order[:2].tolist()  # a dead unit costs nothing to remove
    Y = X @ W.T
    for w in range(10):
        _, f = _lstsq(X, Y, W, groups, c.keep_mask(w), 0.0)
        assert c.error[w] == pytest.approx(f, rel=1e-6, abs=1e-7 * s.yy)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 2]), lam=st.sampled_from([0.0, 0.5, 20.0]),
       scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_greedy_curve_and_swap_property(seed, k, lam, scale):
    X, W = _layer(seed, n=60, d=8, m=3)
    X = X * scale
    s = LayerStats.from_batches([X], W)
    groups = column_groups(8 // k, k)
    c = greedy_elimination(s, groups, lam * scale ** 2)
    for w in range(len(groups) + 1):
        f = selection_error(s, groups, c.keep_mask(w), lam * scale ** 2)
        assert c.error[w] == pytest.approx(f, rel=1e-8, abs=1e-10 * s.yy)
        sw = swap_search(s, groups, c.keep_mask(w), lam * scale ** 2)
        assert sw.keep.sum() == w and sw.error <= c.error[w] + 1e-10 * s.yy


# ------------------------------------------------------------------ swap search
def _best_exchange(s, groups, keep, lam):
    best = (np.inf, None)
    for g in np.flatnonzero(keep):
        for h in np.flatnonzero(~keep):
            cand = keep.copy()
            cand[g], cand[h] = False, True
            f = selection_error(s, groups, cand, lam)
            if f < best[0]:
                best = (f, cand)
    return best


@pytest.mark.parametrize("k,lam", [(1, 0.0), (2, 0.7), (3, 0.0)])
def test_one_swap_is_the_best_single_exchange_and_the_end_is_a_local_optimum(k, lam):
    X, W = _layer(6, n=150, d=12, m=5)
    s = LayerStats.from_batches([X], W)
    groups = column_groups(12 // k, k)
    G = len(groups)
    for keep in _random_keeps(G, (1, G // 2, G - 1)):
        f0 = selection_error(s, groups, keep, lam)
        one = swap_search(s, groups, keep, lam, max_swaps=1)
        fb, _ = _best_exchange(s, groups, keep, lam)
        if fb < f0 - 1e-9 * s.yy:
            assert one.swaps == 1 and one.error == pytest.approx(fb, rel=1e-9)
        else:
            assert one.swaps == 0 and one.error == pytest.approx(f0)
        full = swap_search(s, groups, keep, lam)
        assert full.error <= f0 + 1e-12 * s.yy and full.start_error == pytest.approx(f0)
        assert full.error == pytest.approx(selection_error(s, groups, full.keep, lam), rel=1e-12)
        fb2, _ = _best_exchange(s, groups, full.keep, lam)
        assert fb2 >= full.error - 1e-9 * s.yy  # no single exchange improves any more


def test_mixed_group_sizes_and_ungrouped_columns():
    X, W = _layer(7, n=100, d=11, m=3)
    s = LayerStats.from_batches([X], W)
    groups = [np.array([0]), np.array([1, 2]), np.array([3, 4, 5]), np.array([6]),
              np.array([9, 7])]  # columns 8 and 10 belong to no group: always kept
    Y = X @ W.T
    c = greedy_elimination(s, groups, 0.5)
    for w in range(6):
        _, f = _lstsq(X, Y, W, groups + [np.array([8, 10])], np.append(c.keep_mask(w), True), 0.5)
        assert c.error[w] == pytest.approx(f, rel=1e-8, abs=1e-10 * s.yy)
        sw = swap_search(s, groups, c.keep_mask(w), 0.5, max_swaps=1)
        fb, _ = _best_exchange(s, groups, c.keep_mask(w), 0.5)
        assert sw.error == pytest.approx(min(fb, c.error[w]), rel=1e-9, abs=1e-10 * s.yy)
    assert refit(s, groups, c.keep_mask(0), 0.5).shape == (2, 3)


# ------------------------------------------------------------------ forward selection
@pytest.mark.parametrize("k,lam", [(1, 0.0), (1, 3.0), (2, 0.0), (3, 10.0)])
def test_forward_curve_equals_error_recomputed_from_scratch_and_adds_the_best_group(k, lam):
    X, W = _layer(3, n=200, d=12, m=6)
    X[:, 4] = 0.0  # a dead unit
    s = LayerStats.from_batches([X], W, bias=np.arange(6.0))
    groups = column_groups(12 // k, k)
    c = greedy_selection(s, groups, lam)
    G = len(groups)
    assert c.direction == "forward" and sorted(c.order.tolist()) == list(range(G))
    for w in range(G + 1):
        keep = c.keep_mask(w)
        assert keep.sum() == w
        assert c.error[w] == pytest.approx(selection_error(s, groups, keep, lam), rel=1e-8,
                                           abs=1e-10 * s.yy)
        if w < G:  # the next group added is the best single addition (brute force over the step)
            best = min(selection_error(s, groups, keep | (np.arange(G) == h), lam)
                       for h in np.flatnonzero(~keep))
            assert c.error[w + 1] == pytest.approx(best, rel=1e-9, abs=1e-10 * s.yy)
    json_ready = c.to_dict()
    assert json_ready["direction"] == "forward"


# ------------------------------------------------------------------ pair exchanges
def _best_pair_exchange(s, groups, keep, lam):
    best = np.inf
    for D in itertools.combinations(np.flatnonzero(keep), 2):
        for A in itertools.combinations(np.flatnonzero(~keep), 2):
            cand = keep.copy()
            cand[list(D)], cand[list(A)] = False, True
            best = min(best, selection_error(s, groups, cand, lam))
    return best


@pytest.mark.parametrize("groups,lam", [
    (column_groups(12), 0.0), (column_groups(12), 2.0),  # pairs of single columns
    (column_groups(6, 2), 0.7),  # pairs of 2-column heads
    ([np.array([0]), np.array([1, 2]), np.array([3, 4, 5]), np.array([6]), np.array([7]),
      np.array([9, 8]), np.array([10])], 0.5),  # mixed sizes; column 11 always kept
])
def test_pair_exchange_is_the_best_of_all_pair_exchanges(groups, lam):
    """The closed-form score of every exchange of two kept for two dropped groups against
    each such exchange evaluated from scratch."""
    from optprune.nn.layerwise import _Exchanges, _prepare

    X, W = _layer(21, n=150, d=12, m=5)
    s = LayerStats.from_batches([X], W)
    p = _prepare(s, groups, lam)
    G = len(groups)
    for keep in _random_keeps(G, (2, G // 2, G - 2), seed=1):
        f0 = selection_error(s, groups, keep, lam)
        delta, D, A = _Exchanges(p, keep).best(2)
        assert len(D) == len(A) == 2 and keep[D].all() and not keep[A].any()
        assert f0 + delta == pytest.approx(_best_pair_exchange(s, groups, keep, lam), rel=1e-8,
                                           abs=1e-10 * s.yy)
        # a cap on the candidates scores exchanges among the best groups only: valid, no better
        capped, Dc, Ac = _Exchanges(p, keep).best(2, max_evals=4)
        assert keep[Dc].all() and not keep[Ac].any() and capped >= delta - 1e-9 * s.yy
        cand = keep.copy()
        cand[Dc], cand[Ac] = False, True
        assert f0 + capped == pytest.approx(selection_error(s, groups, cand, lam), rel=1e-8,
                                            abs=1e-10 * s.yy)


# ------------------------------------------------------------------ heuristic selection
def _relu_layer(seed, n=200, d=10, m=4):
    """Activations of a ReLU layer on 4 latent factors: collinear columns, as in trained MLPs."""
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(size=(n, 4)) @ rng.normal(size=(4, d)) + 0.3 * rng.normal(size=d), 0.0)
    return X, rng.normal(size=(m, d))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 2]), lam=st.sampled_from([0.0, 0.5, 20.0]),
       relu=st.booleans())
def test_heuristic_is_never_worse_than_one_swap_from_greedy_and_keeps_w_groups(seed, k, lam, relu):
    X, W = (_relu_layer(seed, n=60, d=10, m=3) if relu else _layer(seed, n=60, d=10, m=3))
    s = LayerStats.from_batches([X], W)
    groups = column_groups(10 // k, k)
    G = len(groups)
    back = greedy_elimination(s, groups, lam)
    curves = [back, greedy_selection(s, groups, lam)]
    for w in range(G + 1):
        one = swap_search(s, groups, back.keep_mask(w), lam)
        h = heuristic_selection(s, groups, w, lam, curves=curves)
        assert h.keep.dtype == bool and h.keep.shape == (G,) and int(h.keep.sum()) == w
        assert h.error <= one.error + 1e-12 * s.yy
        assert h.error == pytest.approx(selection_error(s, groups, h.keep, lam), rel=1e-12,
                                        abs=1e-12 * s.yy)
        assert h.start in ("backward", "forward")


def test_heuristic_reaches_the_optimum_where_one_swap_from_greedy_does_not():
    """A ReLU layer (found by brute force over small random layers) where 1-swap from the
    greedy keep set stops 22% above the optimum of 3 of 10 neurons: a pair exchange leaves
    that local optimum and reaches the optimum."""
    X, W = _relu_layer(9)
    s = LayerStats.from_batches([X], W)
    groups = column_groups(10)
    lam = 1e-3 * float(np.mean(np.diag(s.gxx)))
    best = _brute(s, groups, 3, lam)
    one = swap_search(s, groups, greedy_elimination(s, groups, lam).keep_mask(3), lam)
    assert one.error > 1.2 * best  # 1-swap from greedy is stuck well above the optimum
    h = heuristic_selection(s, groups, 3, lam)
    assert h.keep.sum() == 3 and h.pair_swaps >= 1
    assert h.error == pytest.approx(best, rel=1e-10)


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_validation_errors():
    X, W = _layer(8)
    s = LayerStats.from_batches([X], W)
    groups = column_groups(10)
    with pytest.raises(ValidationError, match="shape of calibration batch 0's X"):
        LayerStats.from_batches([X[:, :9]], W)
    with pytest.raises(ValidationError, match="Y"):
        LayerStats.from_batches([(X, X[:, :3])], W)
    bad = X.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        LayerStats.from_batches([bad], W)
    with pytest.raises(ValidationError, match="gxy"):
        LayerStats(s.gxx, s.gxy[:, :2], s.yy, s.n, W)
    with pytest.raises(ValidationError, match="yy"):
        LayerStats(s.gxx, s.gxy, float("nan"), s.n, W)
    with pytest.raises(ValidationError, match="width"):
        greedy_elimination(s, groups).keep_mask(11)
    with pytest.raises(ValidationError, match="disjoint"):
        greedy_elimination(s, [np.array([0, 1]), np.array([1, 2])])
    with pytest.raises(ValidationError, match=r"in \[0, 10\)"):
        greedy_elimination(s, [np.array([0, 10])])
    with pytest.raises(ValidationError, match="keep mask"):
        swap_search(s, groups, np.ones(9, dtype=bool))
    with pytest.raises(ValidationError, match="max_pair_evals"):
        swap_search(s, groups, np.ones(10, dtype=bool), pairs=True, max_pair_evals=0)
    with pytest.raises(ValidationError, match="width"):
        heuristic_selection(s, groups, 11)
    with pytest.raises(ValidationError, match="curves"):
        heuristic_selection(s, groups, 3, curves=[greedy_elimination(s, groups[:9])])
    with pytest.raises(ValidationError, match="lam"):
        refit(s, groups, np.ones(10, dtype=bool), lam=-1.0)
    few = LayerStats.from_batches([X[:6]], W)  # 6 samples, 10 columns
    with pytest.raises(ValidationError, match="pass a ridge lam > 0"):
        greedy_elimination(few, groups, lam=0.0)
    assert greedy_elimination(few, groups, lam=1.0).error.shape == (11,)  # the ridge fixes it


# ------------------------------------------------------------------ exact selection
def _brute(s, groups, w, lam):
    # f of every keep set by the same Cholesky as selection_error, prepared once (f itself is
    # checked against lstsq on the raw activations above)
    from optprune.nn.layerwise import _prepare

    p = _prepare(s, groups, lam)
    return min(p.error(keep) for keep in _masks(len(groups), w))


@pytest.mark.parametrize("k,lam,seed", [(1, 0.0, 10), (1, 5.0, 11), (2, 0.0, 12), (3, 1.0, 13)])
def test_exact_equals_brute_force_over_all_keep_sets(k, lam, seed):
    pytest.importorskip("pyscipopt")
    from optprune.nn.layerwise import exact_selection

    X, W = _layer(seed, n=150, d=12 if k < 3 else 12, m=5)
    X[:, 3] *= 30.0  # columns of very different scales
    s = LayerStats.from_batches([X], W)
    groups = column_groups(12 // k, k)
    G = len(groups)
    for w in range(0, G + 1):
        best = _brute(s, groups, w, lam)
        r = exact_selection(s, groups, w, lam)
        assert r.is_optimal and r.termination.value == "optimal" and r.keep.sum() == w
        assert r.objective == pytest.approx(best, rel=1e-7, abs=1e-9 * s.yy)
        # an exact fit (f below 1e-10 ||Y||^2, rounding) is reported as 0
        assert r.objective == pytest.approx(selection_error(s, groups, r.keep, lam), rel=1e-12,
                                            abs=1e-10 * s.yy)
        assert r.bound <= r.objective + 1e-12 and r.gap <= 1e-6
        assert r.objective <= r.heuristic_error + 1e-12 * s.yy


def test_exact_with_dead_units_and_intercept_equals_brute_force():
    pytest.importorskip("pyscipopt")
    from optprune.nn.layerwise import exact_selection

    X, W = _layer(14, n=150, d=9, m=3)
    X[:, [1, 6]] = 0.0  # dead units: neutral groups
    b = np.arange(3.0)
    s = LayerStats.from_batches([X], W, bias=b)
    groups = column_groups(9)
    for lam in (0.0, 2.0):
        for w in (2, 4, 7, 8):
            r = exact_selection(s, groups, w, lam)
            assert r.is_optimal and r.keep.sum() == w
            assert r.objective == pytest.approx(_brute(s, groups, w, lam), rel=1e-7, abs=1e-9 * s.yy)


def test_exact_time_limit_is_a_result_with_a_valid_bound():
    pytest.importorskip("pyscipopt")
    import json

    from optprune.nn.layerwise import exact_selection

    X, W = _layer(15, n=200, d=16, m=6)
    s = LayerStats.from_batches([X], W)
    groups = column_groups(16)
    best = _brute(s, groups, 8, 0.0)
    r = exact_selection(s, groups, 8, 0.0, time_limit_s=0.05)
    assert r.termination.value in ("time_limit", "optimal")
    assert r.bound is None or r.bound <= best * (1 + 1e-9)
    assert r.objective >= best * (1 - 1e-12)
    if r.termination.value == "time_limit":
        assert not r.is_optimal and r.solution_status.name == "FEASIBLE"
    json.dumps(r.to_dict())


def test_exact_bad_input_and_missing_extra(monkeypatch):
    import sys

    from optprune.errors import MissingExtraError
    from optprune.nn.layerwise import exact_selection

    X, W = _layer(16)
    s = LayerStats.from_batches([X], W)
    groups = column_groups(10)
    with pytest.raises(ValidationError, match="width"):
        exact_selection(s, groups, 11)
    with pytest.raises(ValidationError, match="time_limit_s"):
        exact_selection(s, groups, 3, time_limit_s=-1)
    with pytest.raises(ValidationError, match="backend"):
        exact_selection(s, groups, 3, backend="gurobi")
    monkeypatch.setitem(sys.modules, "pyscipopt", None)
    with pytest.raises(MissingExtraError, match=r"optprune\[scip\]"):
        exact_selection(s, groups, 3)


def test_exact_without_perspective_part_uses_no_good_cuts(monkeypatch):
    """If H had no positive definite part to shift (t = 0), integral points still get exact
    (no-good) cuts and the node bounds still prove the optimum."""
    pytest.importorskip("pyscipopt")
    from optprune.nn import layerwise

    class NoPerspective(layerwise._Oracle):
        def __init__(self, p):
            super().__init__(p)
            self.t = 0.0

    monkeypatch.setattr(layerwise, "_Oracle", NoPerspective)
    X, W = _layer(17, n=100, d=10, m=3)
    s = LayerStats.from_batches([X], W)
    groups = column_groups(10)
    for w in (3, 5):
        r = layerwise.exact_selection(s, groups, w, 0.5)
        assert r.is_optimal and r.details["perspective_t"] == 0.0
        assert r.objective == pytest.approx(_brute(s, groups, w, 0.5), rel=1e-7)
