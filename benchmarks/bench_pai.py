"""Reconvene-style structured pruning at initialization of a small CNN on digits.

    python benchmarks/bench_pai.py [--density 0.3] [--epochs 15] [--seeds 0,1]

At initialization, score channels with SNIP or SynFlow, allocate exactly (HiGHS)
under a parameter budget, prune physically, train from scratch; against the dense
network and unstructured pruning at initialization at the same density (per-weight
SNIP / SynFlow, global top-k, mask fixed during training). Reports parameters, CPU
inference latency ratio vs dense (batch 256, one thread), test accuracy after
training, and seconds to produce the pruned model. All in one run, side by side.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import torch
from torch import nn

from optprune.nn import prune
from optprune.nn.models import SmallCNN
from optprune.experiments import accuracy, fit, load_digits_split


def latency_ms(model: nn.Module, x: torch.Tensor, reps: int = 30) -> float:
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            model(x)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def unstructured(model: nn.Module, crit: str, density: float, calib) -> tuple[dict, float]:
    """Per-weight scores at init, global top-k over conv/linear weights -> masks."""
    t0 = time.perf_counter()
    weights = {n: p for n, p in model.named_parameters() if p.dim() > 1}
    if crit == "snip":
        x, y = calib
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(weights.values()))
        per = {n: (g * w).abs().detach() for (n, w), g in zip(weights.items(), grads)}
    else:  # synflow: |dR/dw * w| of the linearized absolute network on an all-ones input
        signs = {n: p.detach().sign() for n, p in model.named_parameters()}
        with torch.no_grad():
            for p in model.parameters():
                p.abs_()
        model.double().eval()
        r = model(torch.ones(1, *calib[0].shape[1:], dtype=torch.float64)).sum()
        grads = torch.autograd.grad(r, list(weights.values()))
        per = {n: (g * w).abs().detach().float() for (n, w), g in zip(weights.items(), grads)}
        model.float()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.mul_(signs[n])
    allv = torch.cat([v.flatten() for v in per.values()])
    k = int(density * allv.numel())
    thr = torch.topk(allv, k).values.min()
    masks = {n: (v >= thr).float() for n, v in per.items()}
    return masks, time.perf_counter() - t0


def run(seed: int, density: float, epochs: int, width: int) -> list[dict]:
    d = load_digits_split(seed=seed)
    calib = (d.x_train[:256], d.y_train[:256])
    x_lat = d.x_test[:256]
    rows = []

    torch.manual_seed(seed)
    dense = SmallCNN(1, width, n_blocks=2)
    init = {k: v.clone() for k, v in dense.state_dict().items()}
    lat_dense = latency_ms(dense, x_lat)
    n_dense = sum(p.numel() for p in dense.parameters())
    fit(dense, d.x_train, d.y_train, epochs=epochs, seed=seed)
    rows.append({"method": "dense", "params": n_dense, "latency_ratio": 1.0,
                 "acc": accuracy(dense, d.x_test, d.y_test), "prune_s": 0.0})

    for crit in ("snip", "synflow"):
        # structured, exact allocation at init
        m = SmallCNN(1, width, n_blocks=2)
        m.load_state_dict(init)
        t0 = time.perf_counter()
        pruned, rep = prune(m, crit, density, data=calib, selection="exact", baselines=False)
        t_prune = time.perf_counter() - t0
        lat = latency_ms(pruned, x_lat)
        fit(pruned, d.x_train, d.y_train, epochs=epochs, seed=seed)
        rows.append({"method": f"{crit} structured exact", "params": rep.after["params"],
                     "latency_ratio": lat / lat_dense,
                     "acc": accuracy(pruned, d.x_test, d.y_test), "prune_s": t_prune,
                     "gap": rep.allocation["gap"]})
        # unstructured at the same density of the prunable weights
        m = SmallCNN(1, width, n_blocks=2)
        m.load_state_dict(init)
        ratio = rep.after["params"] / n_dense
        masks, t_mask = unstructured(m, crit, ratio, calib)
        hooks = []
        for n, p in m.named_parameters():
            if n in masks:
                with torch.no_grad():
                    p.mul_(masks[n])
                hooks.append(p.register_hook(lambda g, mk=masks[n]: g * mk))
        lat = latency_ms(m, x_lat)  # a masked dense model runs at dense speed
        fit(m, d.x_train, d.y_train, epochs=epochs, seed=seed, weight_decay=0.0)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n in masks:
                    p.mul_(masks[n])
        kept = int(sum(v.sum() for v in masks.values())) + sum(
            p.numel() for n, p in m.named_parameters() if n not in masks)
        rows.append({"method": f"{crit} unstructured", "params": kept,
                     "latency_ratio": lat / lat_dense,
                     "acc": accuracy(m, d.x_test, d.y_test), "prune_s": t_mask})
        for h in hooks:
            h.remove()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--density", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--seeds", default="0,1")
    a = ap.parse_args()
    torch.set_num_threads(1)
    gc.freeze()
    allrows: dict[str, list[dict]] = {}
    for seed in map(int, a.seeds.split(",")):
        for r in run(seed, a.density, a.epochs, a.width):
            allrows.setdefault(r["method"], []).append(r)
    print(f"SmallCNN(width={a.width}) on digits, parameter budget {a.density:.0%}, "
          f"{a.epochs} epochs from initialization, seeds {a.seeds}")
    print("| method | params | CPU latency / dense | test accuracy (mean of seeds) | seconds to prune |")
    print("|---|---|---|---|---|")
    for name, rs in allrows.items():
        acc = np.mean([r["acc"] for r in rs])
        print(f"| {name} | {int(np.mean([r['params'] for r in rs])):,} | "
              f"{np.mean([r['latency_ratio'] for r in rs]):.2f} | {100 * acc:.1f}% "
              f"({', '.join(format(100 * r['acc'], '.1f') for r in rs)}) | "
              f"{np.mean([r['prune_s'] for r in rs]):.2f} |")


if __name__ == "__main__":
    main()
