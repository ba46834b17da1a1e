"""BMRS on digits: compression vs accuracy against threshold sweeps.

    .venv/bin/python benchmarks/bench_bmrs.py [--quick] [--json out.json]

Two networks on scikit-learn's digits (1,347 train / 450 test, 8x8): a 5 x 50 MLP and a
LeNet-5-like CNN (conv 6 - pool - conv 16 - pool - fc 120 - fc 84 - fc 10). Each is
trained by SVI with a multiplicative noise per neuron/channel (optprune.bayes). Then,
on the same trained network:

* threshold sweeps: prune the fraction f of structures with the lowest L2 norm (of the
  folded weights each structure owns), E[theta] or SNR(theta), f = 0 .. 0.975;
* BMRS_N, BMRS_U8, BMRS_U4 after training: one point each, no threshold;
* BMRS during training (continuous): a fresh network trained with the rule applied
  after every epoch from ``--prune-start`` on;
* the exact allocation: BMRS_N's evidence under a parameter budget and width multiples.

Accuracy is that of the noisy network in eval mode (theta = E[theta] * mask), which
equals the physically pruned network (tests/bayes). "Compression" is the fraction of
structures pruned; the parameter fraction kept (exact, of the pruned network) is shown
too. The knee of a sweep is reported as the largest compression whose accuracy is within
1 point of the unpruned network's ("knee_1pt"), and with the Kneedle rule (largest
distance below the chord from f = 0 to the largest f).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from optprune.bayes import (attach_noise, bmrs_allocate, evidence_change,  # noqa: E402
                            posterior_scores, train_svi)
from optprune.alloc import allocate  # noqa: E402
from optprune.nn import discover, score  # noqa: E402
from optprune.nn import build_problem  # noqa: E402
from optprune.nn.models import MLP  # noqa: E402
from optprune.experiments import accuracy, load_digits_split  # noqa: E402
from optprune.experiments.jsonio import write_json_atomic  # noqa: E402

FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975]
BASELINES = ("l2", "e_theta", "snr")
RULES = ("N", "U8", "U4")
CONTINUOUS = ("N", "U8")  # U4 during training costs another run per model (CPU budget)


def lenet5() -> nn.Sequential:
    """LeNet-5's shape (6 and 16 channels, 120 and 84 neurons) for 1 x 8 x 8 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 2 * 2, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def models():
    """name -> (factory, input shape, flat inputs, default SVI epochs)."""
    return {
        "mlp_5x50": (lambda: MLP(64, [50] * 5, 10), (64,), True, 60),
        "lenet5": (lenet5, (1, 8, 8), False, 40),
    }


def structure_scores(nm) -> dict[str, np.ndarray]:
    folded = nm.fold()  # weights scaled by E[theta]: the network that is evaluated
    s = discover(folded, nm.structures.input_shape)
    out = {"l2": score(s, "magnitude")}
    out.update(posterior_scores(nm))
    return out


def evaluate(nm, keep, data) -> tuple[float, float]:
    nm.set_keep(keep)
    acc = accuracy(nm, data.x_test, data.y_test)
    params = nm.structures.predict(keep)["params"] / nm.structures.dense_params
    return acc, params


def sweep(nm, scores, data) -> list[dict]:
    n = nm.n_structures
    order = np.argsort(scores, kind="stable")
    rows = []
    for f in FRACTIONS:
        k = int(round(f * n))
        keep = np.ones(n, dtype=bool)
        keep[order[:k]] = False
        acc, params = evaluate(nm, keep, data)
        rows.append({"compression": k / n, "accuracy": acc, "params_kept": params})
    return rows


def knee(rows: list[dict], dense_acc: float) -> dict[str, float]:
    c = np.array([r["compression"] for r in rows])
    a = np.array([r["accuracy"] for r in rows])
    within = c[a >= dense_acc - 0.01]
    # Kneedle: the point farthest below the chord between the ends of the curve,
    # measured on curves normalized to [0, 1] on both axes; here the curve is concave
    # in compression (flat, then falling), so the knee is the farthest point above.
    cn = (c - c[0]) / max(c[-1] - c[0], 1e-12)
    an = (a - a[-1]) / max(a[0] - a[-1], 1e-12)
    diff = an - (1 - cn)
    return {"knee_1pt": float(within.max()) if within.size else 0.0,
            "knee_kneedle": float(c[int(np.argmax(diff))])}


def interp_acc(rows: list[dict], compression: float) -> float:
    c = [r["compression"] for r in rows]
    a = [r["accuracy"] for r in rows]
    return float(np.interp(compression, c, a))


def run_model(name, make, shape, flat, data, epochs, prune_start, seed, log,
              noise_lr: float = 0.02) -> dict:
    d = data.flat() if flat else data
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    nm = attach_noise(make(), shape)
    hist = train_svi(nm, d.x_train, d.y_train, epochs=epochs, seed=seed, noise_lr=noise_lr)
    t_train = time.perf_counter() - t0
    n = nm.n_structures
    dense_acc = accuracy(nm, d.x_test, d.y_test)
    log(f"[{name}] {n} structures, SVI {epochs} epochs in {t_train:.1f}s, "
        f"test accuracy {dense_acc:.4f}")
    res: dict = {"n_structures": n, "dense_params": nm.structures.dense_params,
                 "epochs": epochs, "noise_lr": noise_lr, "train_time_s": t_train,
                 "dense_accuracy": dense_acc,
                 "final_kl_nats": hist.kl[-1], "sweeps": {}, "knees": {}, "posthoc": {},
                 "continuous": {}}
    scores = structure_scores(nm)
    _, sigma = nm.posterior()
    # Posteriors spread over most of [a, b] (sigma > 10): collapsed towards the prior.
    res["collapsed_fraction"] = float((sigma > 10).mean())
    for b in BASELINES:
        rows = sweep(nm, scores[b], d)
        res["sweeps"][b] = rows
        res["knees"][b] = knee(rows, dense_acc)
    nm.set_keep(np.ones(n, dtype=bool))
    for m in (*RULES, "N_no2pi"):
        # N_no2pi: BMRS_N without the -0.5 ln(2 pi) of the Gaussian normalizer, i.e. the
        # closed form as usually summarized (formulations/bmrs.md, tests).
        df = (evidence_change(nm, m) if m != "N_no2pi"
              else evidence_change(nm, "N") + 0.5 * np.log(2 * np.pi))
        keep = df < 0
        acc, params = evaluate(nm, keep, d)
        comp = float((~keep).mean())
        res["posthoc"][m] = {"compression": comp, "accuracy": acc, "params_kept": params,
                             "max_delta_f": float(df.max()),
                             "baseline_accuracy_at_same_compression": {
                                 b: interp_acc(res["sweeps"][b], comp) for b in BASELINES}}
        log(f"[{name}] BMRS_{m} after training: prunes {comp:.3f} of structures, keeps "
            f"{params:.3f} of parameters, accuracy {acc:.4f}")
    nm.set_keep(np.ones(n, dtype=bool))
    # Exact allocation under hard constraints: at most 25% of the parameters, neuron
    # counts in multiples of 8, channel counts even, at least 2 per layer. The objective
    # is BMRS's evidence (-dF) or, for comparison, a baseline score, same constraints.
    cons = {"budget": 0.25, "multiples": {"neuron": 8, "channel": 2}, "min_keep": 2}
    res["allocation"] = {"constraints": "params <= 0.25, neurons multiple of 8, channels "
                         "even, >= 2 per layer", "rows": {}}
    budget_only = {"budget": 0.25, "multiples": None, "min_keep": 2}
    for obj, c in [(o, cons) for o in ("BMRS_N", "BMRS_U8", *BASELINES)] + [
            (f"{o} (budget and min width only)", budget_only) for o in ("BMRS_N", "e_theta")]:
        t1 = time.perf_counter()
        nm.set_keep(np.ones(n, dtype=bool))
        key = obj.split(" ")[0]
        if key.startswith("BMRS_"):
            sel = bmrs_allocate(nm, key[5:], apply=True, **c)
            keep, r = sel.keep, sel.allocation
        else:
            p, _ = build_problem(nm.structures, scores[key], c["budget"],
                                 multiples=c["multiples"], min_keep=c["min_keep"])
            r = allocate(p, baselines=False)
            keep = r.keep
        acc, params = evaluate(nm, keep, d)
        res["allocation"]["rows"][obj] = {
            "compression": float((~keep).mean()), "accuracy": acc, "params_kept": params,
            "termination": r.termination.value, "gap": r.solve.gap,
            "solve_time_s": time.perf_counter() - t1,
            "widths": {f"{k[0]}": int(keep[idx].sum())
                       for k, idx in nm.structures.layer_kind_index().items()},
            "sweep_accuracy_at_same_params": {
                b: float(np.interp(params, [x["params_kept"] for x in res["sweeps"][b]][::-1],
                                   [x["accuracy"] for x in res["sweeps"][b]][::-1]))
                for b in BASELINES}}
        log(f"[{name}] exact allocation on {obj}, params <= 25%: widths "
            f"{res['allocation']['rows'][obj]['widths']}, accuracy {acc:.4f}")
    nm.set_keep(np.ones(n, dtype=bool))
    for m in CONTINUOUS:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        nc = attach_noise(make(), shape)
        h = train_svi(nc, d.x_train, d.y_train, epochs=epochs, seed=seed, prune_during=m,
                      prune_start_epoch=prune_start, noise_lr=noise_lr)
        keep = nc.keep_mask()
        acc = accuracy(nc, d.x_test, d.y_test)
        res["continuous"][m] = {
            "compression": float((~keep).mean()), "accuracy": acc,
            "params_kept": nc.structures.predict(keep)["params"] / nc.structures.dense_params,
            "kept_per_epoch": h.kept, "train_time_s": time.perf_counter() - t0}
        log(f"[{name}] BMRS_{m} during training: prunes {(~keep).mean():.3f}, accuracy "
            f"{acc:.4f} ({time.perf_counter() - t0:.1f}s)")
    return res


def markdown(results: dict) -> str:
    lines = []
    for name, r in results.items():
        lines.append(f"### {name}: {r['n_structures']} structures, {r['dense_params']} "
                     f"parameters, SVI {r['epochs']} epochs, unpruned accuracy "
                     f"{r['dense_accuracy']:.4f}")
        lines.append("")
        lines.append("| pruned | " + " | ".join(f"{b} acc" for b in BASELINES) + " | params kept (l2) |")
        lines.append("|---|" + "---|" * (len(BASELINES) + 1))
        for i, f in enumerate(r["sweeps"]["l2"]):
            accs = " | ".join(f"{r['sweeps'][b][i]['accuracy']:.4f}" for b in BASELINES)
            lines.append(f"| {f['compression']:.3f} | {accs} | {f['params_kept']:.3f} |")
        lines.append("")
        lines.append("| method | pruned | params kept | accuracy | "
                     + " | ".join(f"{b} at same pruned" for b in BASELINES) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(BASELINES))
        for m, p in r["posthoc"].items():
            base = " | ".join(f"{p['baseline_accuracy_at_same_compression'][b]:.4f}"
                              for b in BASELINES)
            lines.append(f"| BMRS_{m} after training | {p['compression']:.3f} | "
                         f"{p['params_kept']:.3f} | {p['accuracy']:.4f} | {base} |")
        for m, p in r["continuous"].items():
            lines.append(f"| BMRS_{m} during training | {p['compression']:.3f} | "
                         f"{p['params_kept']:.3f} | {p['accuracy']:.4f} |" + " - |" * len(BASELINES))
        lines.append("")
        al = r["allocation"]
        lines.append(f"Exact allocation ({al['constraints']}), no fine-tuning; the sweeps' "
                     "accuracy at the same kept parameters for reference:")
        lines.append("")
        lines.append("| objective | pruned | params kept | accuracy | widths | "
                     + " | ".join(f"{b} sweep at same params" for b in BASELINES) + " |")
        lines.append("|---|---|---|---|---|" + "---|" * len(BASELINES))
        for obj, row in al["rows"].items():
            ref = " | ".join(f"{row['sweep_accuracy_at_same_params'][b]:.4f}" for b in BASELINES)
            widths = "/".join(str(w) for w in row["widths"].values())
            lines.append(f"| {obj} | {row['compression']:.3f} | {row['params_kept']:.3f} | "
                         f"{row['accuracy']:.4f} | {widths} | {ref} |")
        lines.append("")
        lines.append(f"Posteriors with sigma > 10 (spread towards the flat prior): "
                     f"{r['collapsed_fraction']:.3f}; largest dF after training: " + ", ".join(
                         f"BMRS_{m} {p['max_delta_f']:.4g}" for m, p in r["posthoc"].items()))
        lines.append("")
        lines.append("Knees of the sweeps (fraction of structures pruned): " + ", ".join(
            f"{b}: 1pt {k['knee_1pt']:.3f}, Kneedle {k['knee_kneedle']:.3f}"
            for b, k in r["knees"].items()))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few epochs (smoke run)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="SVI epochs per run (default: 60 for the MLP, 40 for LeNet)")
    ap.add_argument("--prune-start", type=int, default=None,
                    help="first epoch of continuous pruning (default: a third of the epochs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-lr", type=float, default=0.02, help="Adam lr of the posteriors")
    ap.add_argument("--models", default="mlp_5x50,lenet5")
    ap.add_argument("--json", default=None, help="write all figures to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load_digits_split()
    out = {}
    t0 = time.perf_counter()
    for name in args.models.split(","):
        make, shape, flat, default_epochs = models()[name]
        epochs = args.epochs or (4 if args.quick else default_epochs)
        prune_start = args.prune_start if args.prune_start is not None else epochs // 3
        out[name] = run_model(name, make, shape, flat, data, epochs, prune_start, args.seed,
                              lambda s: print(s, flush=True), args.noise_lr)
    print()
    print(markdown(out))
    print(f"total time {time.perf_counter() - t0:.1f}s")
    if args.json:
        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
