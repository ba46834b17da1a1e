"""What each stage of the default pipeline buys, on the digits ViT (one stage changed at a
time, same budget, same seeds; one-shot test accuracy on the digits test split and on its
shifted copy (outside the calibration domain, as in bench_calibrated), calibration KL of
the chosen model, and test accuracy after identical fine-tuning).

Variants: ``default``; ``curves-only`` (no Fisher proposal in the measured choice);
``k1`` (the proven optimum of the curves' objective and the Fisher one, measured);
``k8``; ``order-diag`` / ``order-layerwise`` (keep order within a layer);
``fisher-model`` (one draw of model labels instead of the data's); ``scope-consumers``
(only the layers that lost inputs are refit); ``curves-bias-refit`` (the curves refit
only the consumers' biases, not their weights); ``fisher-exact`` (no curves: the summed
Fisher saliency maximized exactly, then the same reconstruction).

    .venv/bin/python benchmarks/bench_calibrated_ablation.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from optprune.nn import pruning  # noqa: E402
from optprune.nn.pipeline import CalibrationOptions  # noqa: E402
from optprune.nn.structures import discover  # noqa: E402
from optprune.nn.train import accuracy, load_digits_split, train  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_calibrated import FAMILIES, shifted  # noqa: E402

VARIANTS: dict[str, dict] = {
    "default": {},
    "curves-only": {"fisher_proposals": 0},
    "k1": {"k_best": 1},
    "k8": {"k_best": 8},
    "order-diag": {"order": "diag"},
    "order-layerwise": {"order": "layerwise"},
    "fisher-model": {"fisher_labels": "model", "fisher_draws": 1},
    "scope-consumers": {"reconstruct_scope": "consumers"},
    "curves-bias-refit": {"curve_alpha": float("inf")},
    "fisher-exact": {},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--budget", type=float, default=12666 / 26762,
                    help="kept fraction of parameters (default: Torch-Pruning's count at ~47%%)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--ft-epochs", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/out/calibrated_ablation.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    fam = FAMILIES["vit"]
    rows = []
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for seed in args.seeds:
        torch.manual_seed(seed)
        d = load_digits_split(seed=seed)
        model = fam.build()
        train(model, d.x_train, d.y_train, epochs=fam.epochs, lr=fam.lr, seed=seed)
        model.eval()
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(d.x_train.shape[0], generator=g)[:1024]
        calib = (d.x_train[idx], d.y_train[idx])
        ss = discover(model, (1, 8, 8))
        xshift = shifted(d.x_test, seed)
        for name in args.variants:
            t = time.perf_counter()
            if name == "fisher-exact":
                pruned, rep = pruning.prune(model, "fisher", args.budget, structures=ss, data=calib,
                                            multiples=fam.multiples, baselines=False,
                                            reconstruct=True,
                                            importance_kw={"labels": "data"})
                loss = None
            else:
                opts = CalibrationOptions(seed=seed, **VARIANTS[name])
                pruned, rep = pruning.prune(model, data=calib, budget=args.budget, structures=ss,
                                            multiples=fam.multiples, baselines=False,
                                            calibration=opts)
                c = rep.stages["candidates"][rep.stages["chosen"]]
                loss = c.get("loss_reconstructed", c["loss_masked"])
            secs = time.perf_counter() - t
            row = {"seed": seed, "variant": name, "params": rep.after["params"], "time_s": secs,
                   "calib_kl": loss, "acc": accuracy(pruned, d.x_test, d.y_test),
                   "acc_shift": accuracy(pruned, xshift, d.y_test)}
            train(pruned, d.x_train, d.y_train, epochs=args.ft_epochs, lr=1e-3, seed=seed)
            row["acc_ft"] = accuracy(pruned, d.x_test, d.y_test)
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    out = ["| variant | params | one-shot acc | shifted | calib KL | acc after FT | time s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for v in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == v]
        kl = [r["calib_kl"] for r in rs if r["calib_kl"] is not None]

        def ms(k: str, rs=rs) -> str:
            a = np.array([r[k] for r in rs])
            return f"{100 * a.mean():.1f} ± {100 * a.std():.1f}"
        cells = [v, f"{np.mean([r['params'] for r in rs]):,.0f}", ms("acc"), ms("acc_shift"),
                 f"{np.mean(kl):.3f}" if kl else "-", ms("acc_ft"),
                 f"{np.mean([r['time_s'] for r in rs]):.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
