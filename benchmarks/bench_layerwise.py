"""Layerwise selection: greedy OBS elimination, 1-swap and the heuristic against the proven optimum.

    .venv/bin/python benchmarks/bench_layerwise.py [--time-limit 20] [--time-limit-small 60]
        [--brute-seeds 40] [--json out.json]

For each consumer layer (at most 64 groups) and each width (25/50/75% of the groups), every
selection is refitted by the same ridge least squares (optprune.nn.layerwise.refit) and judged
by the same error f (the refitted layer's squared output error on the calibration rows plus the
ridge term), reported relative to ||Y||^2:

* greedy: backward elimination with OBS updates (one pass gives every width);
* greedy+swap: then 1-swap local search;
* heuristic: optprune.nn.layerwise.heuristic_selection, the best of single and pair exchanges
  from the backward and the forward greedy keep sets;
* exact: branch and cut in SCIP (optprune.nn.layerwise.exact_selection) started from the
  heuristic, time-limited (--time-limit; layers of at most --small-groups groups get
  --time-limit-small); its proven lower bound is printed beside it, and "proven" says whether
  it closed the gap;
* magnitude: the w groups of largest ||W[:, g]||_F;
* act-weighted: the w groups of largest ||W[:, g]||_F * ||X_g||_F (the Wanda-sp/FLAP-like norm
  of the group's contribution).

Layers: the 5 x 50 digits MLP (benchmarks/bench_bmrs.py's recipe, 30 epochs) and its five
Linear consumers of 50 neurons; a 3 x 24 digits MLP (same training) and its three consumers of
24; the digits ViT of optprune.experiments (dim 32, 3 blocks of 4 heads of 8, FFN 64; 15
epochs) with each block's attention projection (4 head groups of 8 columns) and fc2 (64
channels); random correlated layers (a factor model: 20, 24 and 48 columns, and 12 heads of 4
columns). Calibration: 512 training images (the ViT: 512 x 17 tokens); the target is the dense
layer's own output with its bias (an intercept column, always kept).
ridge lam = --ridge * mean(diag X^T X).

--brute-seeds N adds the study behind the heuristic's design: random small layers (14 groups;
ReLU activations of a 6-factor model with some dead units, and a 4-factor model with lognormal
column scales; N seeds of each) at widths 3, 5, 7, 9, 11, each search against the brute-force
optimum over every keep set.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from optprune.nn.layerwise import (LayerStats, column_groups, exact_selection,  # noqa: E402
                                   greedy_elimination, greedy_selection, heuristic_selection,
                                   selection_error, swap_search)
from optprune.nn.models import MLP  # noqa: E402
from optprune.experiments import fit, load_digits_split, pretrained_digits_vit  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75)


def _capture(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> dict[str, np.ndarray]:
    mods = dict(model.named_modules())
    acts: dict[str, np.ndarray] = {}
    hooks = [mods[n].register_forward_pre_hook(
        lambda _m, a, n=n: acts.__setitem__(n, a[0].detach().double().reshape(-1, a[0].shape[-1])
                                           .numpy())) for n in names]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {n: acts[n] for n in names}


def real_layers(n_calib: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    digits = load_digits_split(seed=seed)
    flat = digits.flat()
    out = []
    for hidden in ([50] * 5, [24] * 3):
        mlp = MLP(64, hidden, 10)
        fit(mlp, flat.x_train, flat.y_train, epochs=30, seed=seed)
        names = [str(i) for i in range(2, 2 * len(hidden) + 1, 2)]
        acts = _capture(mlp, names, flat.x_train[:n_calib])
        mods = dict(mlp.named_modules())
        out += [{"name": f"mlp{len(hidden)}x{hidden[0]}.{n}", "x": acts[n], "w": mods[n].weight,
                 "b": mods[n].bias, "groups": column_groups(hidden[0])} for n in names]
    vit = pretrained_digits_vit(epochs=15, seed=seed).model
    names = [f"blocks.{b}.{m}" for b in range(3) for m in ("attn.proj", "mlp.fc2")]
    acts = _capture(vit, names, digits.x_train[:n_calib])
    mods = dict(vit.named_modules())
    for n in names:
        heads = n.endswith("proj")
        out.append({"name": f"vit.{n}", "x": acts[n], "w": mods[n].weight, "b": mods[n].bias,
                    "groups": column_groups(4, 8) if heads else column_groups(64)})
    return out


def random_layers(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for name, d, k, m in (("rand20", 20, 1, 16), ("rand24", 24, 1, 16), ("rand48", 48, 1, 32),
                          ("rand12x4", 48, 4, 32)):
        n = 2000
        factors = rng.normal(size=(n, 6))
        x = factors @ rng.normal(size=(6, d)) + 0.5 * rng.normal(size=(n, d))
        x *= rng.lognormal(0.0, 0.7, size=d)  # columns of different scales
        out.append({"name": name, "x": x, "w": rng.normal(size=(m, d)) / np.sqrt(d),
                    "b": rng.normal(size=m), "groups": column_groups(d // k, k)})
    return out


def _top(scores: np.ndarray, w: int) -> np.ndarray:
    keep = np.zeros(scores.size, dtype=bool)
    keep[np.argsort(-scores, kind="stable")[:w]] = True
    return keep


def _gap(f: float, ref: float) -> float:
    """(f - ref) / ref, with errors below 1e-10 ||Y||^2 counted as 0 (the statistics' rounding)."""
    f, ref = (0.0 if v < 1e-10 else v for v in (f, ref))
    return (f - ref) / ref if ref > 0 else (0.0 if f == 0 else float("inf"))


def run_layer(layer: dict, ridge: float, time_limit_s: float) -> list[dict]:
    w_np = np.asarray(layer["w"].detach().double() if hasattr(layer["w"], "detach") else layer["w"])
    b_np = np.asarray(layer["b"].detach().double() if hasattr(layer["b"], "detach") else layer["b"])
    x = layer["x"]
    groups = layer["groups"]
    G = len(groups)
    stats = LayerStats.from_batches([x], w_np, bias=b_np)
    lam = ridge * float(np.mean(np.diag(stats.gxx)[:-1]))
    t = time.perf_counter()
    curve = greedy_elimination(stats, groups, lam)
    t_greedy = time.perf_counter() - t
    t = time.perf_counter()
    forward = greedy_selection(stats, groups, lam)
    t_forward = time.perf_counter() - t
    mag = np.array([np.linalg.norm(w_np[:, g]) for g in groups])
    act = np.array([np.sqrt(np.sum(np.sum(w_np[:, g] ** 2, 0) * np.sum(x[:, g] ** 2, 0)))
                    for g in groups])
    rows = []
    for frac in FRACTIONS:
        w = int(round(frac * G))
        t = time.perf_counter()
        sw = swap_search(stats, groups, curve.keep_mask(w), lam)
        t_swap = time.perf_counter() - t
        t = time.perf_counter()
        heur = heuristic_selection(stats, groups, w, lam, curves=[curve, forward])
        t_heur = time.perf_counter() - t
        ex = exact_selection(stats, groups, w, lam, time_limit_s=time_limit_s, start=heur.keep)
        yy = stats.yy
        row = {
            "layer": layer["name"], "groups": G, "columns": int(x.shape[1]), "rows": int(x.shape[0]),
            "width": w, "lam": lam, "time_limit_s": time_limit_s,
            "greedy": curve.error[w] / yy, "forward": forward.error[w] / yy,
            "swap": sw.error / yy, "swaps": sw.swaps,
            "heuristic": heur.error / yy, "heuristic_start": heur.start,
            "heuristic_swaps": heur.swaps, "heuristic_pair_swaps": heur.pair_swaps,
            "exact": ex.objective / yy, "bound": None if ex.bound is None else ex.bound / yy,
            "proven": ex.is_optimal, "termination": ex.termination.value, "nodes": ex.nodes,
            "neutral_groups": ex.details.get("neutral_groups", 0),
            "magnitude": selection_error(stats, groups, _top(mag, w), lam) / yy,
            "act_weighted": selection_error(stats, groups, _top(act, w), lam) / yy,
            "time_greedy_all_widths_s": t_greedy, "time_forward_all_widths_s": t_forward,
            "time_swap_s": t_swap, "time_heuristic_s": t_heur, "time_exact_s": ex.time_s,
        }
        row["gap_greedy"] = _gap(row["greedy"], row["exact"])
        row["gap_swap"] = _gap(row["swap"], row["exact"])
        row["gap_heuristic"] = _gap(row["heuristic"], row["exact"])
        lb = row["bound"] if row["bound"] and row["bound"] > 0 else None
        row["gap_heuristic_to_bound"] = None if lb is None else \
            (row["heuristic"] - lb) / row["heuristic"]
        rows.append(row)
        print(_fmt(row), flush=True)
    return rows


HEADER = ("| layer | G | w | greedy | greedy+swap | heuristic (start) | exact | bound | proven "
          "| gap greedy | gap swap | gap heuristic | magnitude | act-weighted | t swap | t heuristic "
          "| t exact |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _fmt(r: dict) -> str:
    b = "-" if r["bound"] is None else f"{r['bound']:.4g}"
    return (f"| {r['layer']} | {r['groups']} | {r['width']} | {r['greedy']:.4g} | {r['swap']:.4g} | "
            f"{r['heuristic']:.4g} ({r['heuristic_start'][0]}) | {r['exact']:.4g} | {b} | "
            f"{'yes' if r['proven'] else 'no'} | {100 * r['gap_greedy']:.2f}% | "
            f"{100 * r['gap_swap']:.2f}% | {100 * r['gap_heuristic']:.2f}% | {r['magnitude']:.4g} | "
            f"{r['act_weighted']:.4g} | {1e3 * r['time_swap_s']:.0f} ms | "
            f"{1e3 * r['time_heuristic_s']:.0f} ms | {r['time_exact_s']:.1f} s |")


LAYER_HEADER = ("| layer | G | t greedy backward (all w) | t greedy forward (all w) | t swap (3 w) "
                "| t heuristic (3 w) | t exact (3 w) |\n|---|---|---|---|---|---|---|")


def _fmt_layer(rows: list[dict]) -> str:
    r0 = rows[0]
    return (f"| {r0['layer']} | {r0['groups']} | {1e3 * r0['time_greedy_all_widths_s']:.0f} ms | "
            f"{1e3 * r0['time_forward_all_widths_s']:.0f} ms | "
            f"{1e3 * sum(r['time_swap_s'] for r in rows):.0f} ms | "
            f"{1e3 * sum(r['time_heuristic_s'] for r in rows):.0f} ms | "
            f"{sum(r['time_exact_s'] for r in rows):.1f} s |")


def _brute_layer(seed: int, kind: str, G: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 400
    if kind == "relu":
        X = np.maximum(rng.normal(size=(n, 6)) @ rng.normal(size=(6, G)) + 0.3 * rng.normal(size=G), 0)
        X[:, rng.random(G) < 0.1] = 0.0  # dead units
    else:
        X = rng.normal(size=(n, 4)) @ rng.normal(size=(4, G)) + 0.3 * rng.normal(size=(n, G))
        X *= rng.lognormal(0.0, 0.7, size=G)
    return X, rng.normal(size=(int(rng.integers(3, 12)), G))


def brute_study(n_seeds: int, ridge: float, G: int = 14) -> dict:
    """Every search against the brute-force optimum on random small layers (see the docstring)."""
    import itertools

    from optprune.nn.layerwise import _prepare

    gaps: dict[str, list[float]] = {k: [] for k in ("backward+1swap", "backward+pairs", "forward+1swap",
                                                     "forward+pairs", "best of both, 1swap",
                                                     "heuristic (best of both, pairs)")}
    times: dict[str, float] = {k: 0.0 for k in gaps}
    subsets = {w: [np.isin(np.arange(G), S) for S in itertools.combinations(range(G), w)]
               for w in (3, 5, 7, 9, 11)}
    for seed in range(n_seeds):
        for kind in ("relu", "factor"):
            X, W = _brute_layer(seed, kind, G)
            stats = LayerStats.from_batches([X], W, bias=np.zeros(W.shape[0]))
            lam = ridge * float(np.mean(np.diag(stats.gxx)[:-1]))
            groups = column_groups(G)
            p = _prepare(stats, groups, lam)
            back, fwd = greedy_elimination(stats, groups, lam), greedy_selection(stats, groups, lam)
            for w, masks in subsets.items():
                opt = min(p.error(k) for k in masks)
                if opt <= 1e-10 * stats.yy:
                    continue  # an exact fit: every search finds it
                f = {}
                for name, c, pairs in (("backward+1swap", back, False), ("backward+pairs", back, True),
                                       ("forward+1swap", fwd, False), ("forward+pairs", fwd, True)):
                    sel = swap_search(stats, groups, c.keep_mask(w), lam, pairs=pairs)
                    f[name] = sel.error
                    times[name] += sel.time_s
                f["best of both, 1swap"] = min(f["backward+1swap"], f["forward+1swap"])
                h = heuristic_selection(stats, groups, w, lam, curves=[back, fwd])
                f["heuristic (best of both, pairs)"] = h.error
                times["heuristic (best of both, pairs)"] += h.time_s
                for k, v in f.items():
                    gaps[k].append((v - opt) / opt)
    n = len(next(iter(gaps.values())))
    print(f"\nBrute-force study: {n} instances (G = {G}, widths 3-11, {n_seeds} seeds x 2 kinds; "
          "exact fits left out)\n")
    print("| search | max gap | instances > 1% | instances not optimal | mean gap "
          "| search time (all) |\n|---|---|---|---|---|---|")
    out = {}
    for k, v in gaps.items():
        a = np.array(v)
        out[k] = {"max_gap": float(a.max()), "above_1pct": int((a > 0.01).sum()),
                  "not_optimal": int((a > 1e-9).sum()), "mean_gap": float(a.mean()),
                  "time_s": times[k] if times[k] else None}
        t = "-" if not times[k] else f"{times[k]:.2f} s"
        print(f"| {k} | {100 * a.max():.2f}% | {out[k]['above_1pct']} | {out[k]['not_optimal']} | "
              f"{100 * a.mean():.3f}% | {t} |")
    return {"instances": n, "searches": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time-limit", type=float, default=20.0, help="seconds per exact solve")
    ap.add_argument("--time-limit-small", type=float, default=None,
                    help="seconds per exact solve on layers of at most --small-groups groups "
                         "(default: --time-limit)")
    ap.add_argument("--small-groups", type=int, default=24)
    ap.add_argument("--ridge", type=float, default=1e-3, help="lam / mean(diag X^T X)")
    ap.add_argument("--n-calib", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated layer name prefixes")
    ap.add_argument("--brute-seeds", type=int, default=0,
                    help="seeds of the brute-force study on random 14-group layers (0: skip)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    small_limit = args.time_limit if args.time_limit_small is None else args.time_limit_small
    layers = real_layers(args.n_calib, args.seed) + random_layers(args.seed)
    gc.freeze()
    if args.only:
        layers = [la for la in layers if any(la["name"].startswith(p) for p in args.only.split(","))]
    print(f"ridge lam = {args.ridge:g} * mean(diag X^T X); exact time limit {args.time_limit:g} s "
          f"({small_limit:g} s on layers of at most {args.small_groups} groups); errors are "
          f"f / ||Y||^2; load average at start {os.getloadavg()[0]:.1f}")
    print(HEADER)
    rows, per_layer = [], []
    for la in layers:
        limit = small_limit if len(la["groups"]) <= args.small_groups else args.time_limit
        lr = run_layer(la, args.ridge, limit)
        rows += lr
        per_layer.append(lr)
    print(f"\n{LAYER_HEADER}")
    for lr in per_layer:
        print(_fmt_layer(lr))
    proven = [r for r in rows if r["proven"]]
    summary = {
        "instances": len(rows), "proven": len(proven),
        "max_gap_greedy_proven": max((r["gap_greedy"] for r in proven), default=None),
        "max_gap_swap_proven": max((r["gap_swap"] for r in proven), default=None),
        "max_gap_heuristic_proven": max((r["gap_heuristic"] for r in proven), default=None),
        "mean_gap_greedy_proven": float(np.mean([r["gap_greedy"] for r in proven])) if proven else None,
        "swap_equals_exact_proven": sum(r["gap_swap"] <= 1e-9 for r in proven),
        "heuristic_equals_exact_proven": sum(r["gap_heuristic"] <= 1e-9 for r in proven),
        "heuristic_below_swap": sum(_gap(r["swap"], r["heuristic"]) > 1e-9 for r in rows),
        "max_heuristic_gain_over_swap": max((r["swap"] - r["heuristic"]) / r["swap"] for r in rows
                                            if r["swap"] > 1e-10),
        "exact_below_heuristic": sum(r["gap_heuristic"] > 1e-9 for r in rows),
        "max_gap_heuristic_to_bound_unproven": max((r["gap_heuristic_to_bound"] for r in rows
                                                    if not r["proven"] and r["gap_heuristic_to_bound"]
                                                    is not None), default=None),
        # over the rows where the refit error is not rounding noise (> 1e-10 ||Y||^2)
        "magnitude_over_heuristic_median": float(np.median(
            [r["magnitude"] / r["heuristic"] for r in rows if r["heuristic"] > 1e-10])),
        "act_weighted_over_heuristic_median": float(np.median(
            [r["act_weighted"] / r["heuristic"] for r in rows if r["heuristic"] > 1e-10])),
        "time_heuristic_max_s": max(r["time_heuristic_s"] for r in rows),
        "time_swap_max_s": max(r["time_swap_s"] for r in rows),
        "load_average_end": os.getloadavg()[0],
        "total_s": time.perf_counter() - t0,
    }
    print(json.dumps(summary, indent=1))
    brute = brute_study(args.brute_seeds, args.ridge) if args.brute_seeds else None
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": rows, "summary": summary, "brute": brute}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
