"""Big-M against the ideal ReLU formulation for small fan-in (formulations/adversarial.md),
measured side by side in one run.

Networks: seeded digits MLPs (optprune.encode.prune), unstructured magnitude pruning of
every hidden layer's weights to --sparsity (per layer), then a short fine-tune with the
mask held, so that the live fan-in of a hidden neuron is a handful of inputs. For each
network, test image and attack (untargeted margin, --bounds: LP by default) the same MIP
is built as

  bigm          the default big-M rows;
  auto<k>       plus the 2^n - 2 ideal rows of every unstable neuron with fan-in n <= k;
  cuts<R>       big-M plus R rounds of root separation of the same family for every
                unstable neuron (any fan-in): solve the LP relaxation, add per neuron the
                most violated inequality (i in I iff w_i x_i < w_i (L'_i (1-s) + U'_i s)),
                if violated by > 1e-6; an experiment kept here, not in the library;

and solved by HiGHS under --time-limit. Reported: binaries, rows, the pure LP relaxation
bound (no solver cuts; smaller is tighter for this maximization) and the fraction of
big-M's root gap to the optimum it closes, build time (with separation for cuts), solve
time, nodes, and whether all variants reach the same optimum.

Examples (the runs recorded in benchmarks/_section_ideal_relu.md):
  python benchmarks/bench_ideal_relu.py --nets 50x2:0.95,100x3:0.92 --images 0,1,2 \\
      --attacks linf:0.1,l1:1 --variants bigm,auto4,auto6,auto8,cuts5 --time-limit 60
  python benchmarks/bench_ideal_relu.py --nets 50x2:0.95,100x3:0.92 --images 0,1,2 \\
      --attacks linf:0.1 --bounds interval --variants bigm,auto4,auto6,cuts5 --time-limit 60
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _nets(s: str) -> list[tuple[tuple[int, ...], float]]:
    out = []
    for part in s.split(","):
        arch, sp = part.split(":")
        w, n = arch.lower().split("x")
        out.append(((int(w),) * int(n), float(sp)))
    return out


def _attacks(s: str) -> list[tuple[str, float]]:
    return [(p.split(":")[0], float(p.split(":")[1])) for p in s.split(",")]


def prune_weights_and_finetune(model, sparsity: float, X, y, epochs: int, seed: int):
    """Magnitude-prune each hidden Linear to ``sparsity`` of its weights, fine-tune with the
    mask re-applied after every step (the output layer stays dense)."""
    import torch

    lin = [m for m in model if isinstance(m, torch.nn.Linear)]
    masks = []
    for L in lin[:-1]:
        a = L.weight.detach().abs()
        k = int(round(sparsity * a.numel()))
        thr = torch.kthvalue(a.flatten(), k).values if k > 0 else -1.0
        masks.append((a > thr).float())
        with torch.no_grad():
            L.weight.mul_(masks[-1])
    from optprune.experiments import fit

    def remask(_step: int) -> None:
        with torch.no_grad():
            for L, m in zip(lin[:-1], masks):
                L.weight.mul_(m)

    # Adam (AdamW without decay) at a constant 1e-3, batches of 64 in seeded order.
    fit(model, torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.long),
        epochs=epochs, lr=1e-3, weight_decay=0.0, seed=seed + 7, schedule="constant",
        after_step=remask)
    return model.eval()


def relaxed_bound(model) -> tuple:
    from optprune.solve import LinearModel, solve

    lp = LinearModel(model.c, model.A, model.row_lower, model.row_upper, model.col_lower,
                     model.col_upper, np.zeros(model.num_cols, dtype=bool), model.sense)
    res = solve(lp, "highs")
    return float(res.objective), res


def _neurons(enc):
    """Per unstable neuron: (h col, s col, input cols, weights, L', U', constant)."""
    net, region, bnd, cols = enc.network, enc.region, enc.bounds, enc.cols
    in_lo, in_up = region.box()
    prev = cols.x
    out = []
    for k, layer in enumerate(net.layers):
        h, s = cols.h[k], cols.s[k]
        alive = prev >= 0
        fixed = in_up <= in_lo
        for i in np.flatnonzero(s >= 0):
            w = layer.W[i]
            nz = (w != 0) & alive
            var, fx = np.flatnonzero(nz & ~fixed), np.flatnonzero(nz & fixed)
            wv = w[var]
            lo_c = np.where(wv >= 0, in_lo[var], in_up[var])
            up_c = np.where(wv >= 0, in_up[var], in_lo[var])
            out.append((int(h[i]), int(s[i]), prev[var], wv, lo_c, up_c,
                        float(layer.b[i] + w[fx] @ in_lo[fx])))
        prev = h
        in_lo, in_up = ((np.maximum(bnd.lower[k], 0), np.maximum(bnd.upper[k], 0))
                        if layer.relu else (bnd.lower[k], bnd.upper[k]))
    return out


def add_root_cuts(enc, rounds: int, tol: float = 1e-6):
    """Big-M plus ``rounds`` of separation of the ideal family at the LP optimum."""
    import scipy.sparse as sp

    from optprune.solve import LinearModel

    model = enc.model
    neurons = _neurons(enc)
    added = 0
    for _ in range(rounds):
        _, res = relaxed_bound(model)
        v = res.x
        ri, cj, vals, rhs = [], [], [], []
        for hc, sc, xc, w, lo_c, up_c, const in neurons:
            x, z = v[xc], v[sc]
            inI = w * x < w * (lo_c * (1 - z) + up_c * z)
            rhs_val = (np.sum(w[inI] * (x[inI] - lo_c[inI] * (1 - z)))
                       + (const + np.sum(w[~inI] * up_c[~inI])) * z)
            if v[hc] - rhs_val <= tol * (1 + abs(rhs_val)):
                continue
            r = len(rhs)
            wl = float(np.sum(w[inI] * lo_c[inI]))
            sco = -(const + wl + float(np.sum(w[~inI] * up_c[~inI])))
            ri += [r] * (2 + int(inI.sum()))
            cj += [hc, sc, *xc[inI]]
            vals += [1.0, sco, *(-w[inI])]
            rhs.append(-wl)
        if not rhs:
            break
        m = len(rhs)
        C = sp.csc_matrix((vals, (ri, cj)), shape=(m, model.num_cols))
        model = LinearModel(model.c, sp.vstack([model.A, C]).tocsc(),
                            np.r_[model.row_lower, np.full(m, -np.inf)],
                            np.r_[model.row_upper, rhs], model.col_lower, model.col_upper,
                            model.integrality, model.sense, model.offset, name=model.name,
                            metadata=dict(model.metadata))
        added += m
    return dataclasses.replace(enc, model=model), added


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from optprune.encode import AttackSpec, Region, compute_bounds, encode, from_torch, solve_encoding
    from optprune.encode.prune import accuracy, digits_data, train_mlp
    from optprune.solve import SolveOptions

    torch.set_num_threads(1)
    Xtr, ytr, Xte, yte = digits_data(args.seed)
    variants = args.variants.split(",")
    rows = []
    for arch, sparsity in _nets(args.nets):
        dense = train_mlp(arch, Xtr, ytr, seed=args.seed, epochs=args.epochs)
        acc_d = accuracy(dense, Xte, yte)
        model = prune_weights_and_finetune(dense, sparsity, Xtr, ytr, args.finetune_epochs,
                                           args.seed)
        net = from_torch(model)
        tag = f"{'x'.join(map(str, arch))}@{sparsity:g}"
        print(f"# {tag}: test accuracy dense {acc_d:.3f}, pruned {accuracy(model, Xte, yte):.3f}, "
              f"weights {[int(np.count_nonzero(L.W)) for L in net.layers]}", flush=True)
        for img in args.images:
            x0, label = Xte[img], int(yte[img])
            for norm, radius in args.attacks:
                region = Region.make(net, x0, norm, radius)
                bnd = compute_bounds(net, region, args.bounds)
                spec = AttackSpec(label)
                for var in variants:
                    t0 = time.perf_counter()
                    cuts = 0
                    if var.startswith("auto"):
                        enc = encode(net, region, spec, bnd, relu="auto", max_fan_in=int(var[4:]))
                    else:
                        enc = encode(net, region, spec, bnd)
                        if var.startswith("cuts"):
                            enc, cuts = add_root_cuts(enc, int(var[4:]))
                    build = time.perf_counter() - t0
                    lp, _ = relaxed_bound(enc.model)
                    res = solve_encoding(enc, "highs", SolveOptions(time_limit_s=args.time_limit,
                                                                    rel_gap=1e-4))
                    fan = (np.concatenate(enc.cols.fan_in) if enc.cols.fan_in
                           else np.zeros(0, dtype=int))
                    rec = {"net": tag, "image": img, "norm": norm, "radius": radius,
                           "bounds": args.bounds,
                           "variant": var, "binaries": enc.model.num_integer,
                           "rows": enc.model.num_rows, "nonzeros": int(enc.model.A.nnz),
                           "ideal_neurons": enc.cols.ideal_neurons, "cuts": cuts,
                           "unstable_fan_in": np.bincount(fan[fan >= 0]).tolist(),
                           "root_lp": lp, "build_s": build, "solve_s": res.solve_time_s,
                           "nodes": res.nodes, "termination": res.termination,
                           "objective": res.objective, "bound": res.bound,
                           "outcome": res.outcome, "verified": res.verified}
                    rows.append(rec)
                    print(json.dumps(rec), flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(rec) + "\n")
    return rows


def _sgm(ts: list[float], shift: float = 1.0) -> float:
    return math.exp(np.mean([math.log(t + shift) for t in ts])) - shift


def summarize(rows: list[dict], variants: list[str]) -> str:
    by = {}
    for r in rows:
        by.setdefault((r["net"], r["image"], r["norm"]), {})[r["variant"]] = r
    lines = ["| net | variant | instances | solved | same optimum | rows (mean) | "
             "root LP gap closed vs big-M (mean) | build s (mean) | solve s (sh. geo. mean) | "
             "nodes (mean) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for net in dict.fromkeys(k[0] for k in by):
        groups = [g for k, g in by.items() if k[0] == net]
        for v in variants:
            rs = [g[v] for g in groups if v in g]
            closed, same = [], 0
            for g in groups:
                b, r = g.get("bigm"), g.get(v)
                if b is None or r is None:
                    continue
                opt = b["objective"] if b["termination"] == "optimal" else None
                if opt is not None and b["root_lp"] - opt > 1e-9:
                    closed.append((b["root_lp"] - r["root_lp"]) / (b["root_lp"] - opt))
                if (opt is not None and r["termination"] == "optimal"
                        and abs(r["objective"] - opt) <= 1e-3 * (1 + abs(opt))):
                    same += 1
            solved = sum(r["termination"] == "optimal" for r in rs)
            lines.append(
                f"| {net} | {v} | {len(rs)} | {solved} | {same} | "
                f"{np.mean([r['rows'] for r in rs]):.0f} | "
                f"{100 * np.mean(closed) if closed else float('nan'):.1f}% | "
                f"{np.mean([r['build_s'] for r in rs]):.3f} | "
                f"{_sgm([r['solve_s'] for r in rs]):.2f} | "
                f"{np.mean([r['nodes'] or 0 for r in rs]):.0f} |")
    return "\n".join(lines)


def main() -> None:
    from optprune.encode.bounds import METHODS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default="50x2:0.95,100x3:0.92", help="ARCH:SPARSITY,...")
    p.add_argument("--images", default="0,1,2")
    p.add_argument("--attacks", default="linf:0.1,l1:1")
    p.add_argument("--variants", default="bigm,auto4,auto6,auto8,cuts5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--time-limit", type=float, default=60.0)
    p.add_argument("--bounds", default="lp", choices=list(METHODS))
    p.add_argument("--out", default=None, help="append one JSON line per solve")
    args = p.parse_args()
    args.images = [int(i) for i in args.images.split(",")]
    args.attacks = _attacks(args.attacks)
    t0 = time.perf_counter()
    rows = run(args)
    print()
    print(summarize(rows, args.variants.split(",")))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
