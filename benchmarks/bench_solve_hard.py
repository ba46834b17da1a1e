"""Solving the hard attack MIPs: an ablation of each technique, side by side in one run.

Networks: 64-300-300-10 and 64-200-200-200-10 ReLU MLPs (and any --archs) trained by
``optprune.encode.prune.train_mlp`` on scikit-learn's digits with --seed (default 11, a
seed no test uses), 60 epochs. Instances: test images --images of the seeded split,
L-inf radius 0.05 within [0, 1], targeted margin max y_c - y_t with c the runner-up class
of the clean image (the problem bench_omlt.py solves). One core: HiGHS threads=1,
torch / BLAS single-threaded. Time limit --time-limit for everything after the bounds
(the strategy's PGD and cut loop count against it).

Variants (--variants, each a row of the table):

  bare        symbolic bounds, the bare big-M model, HiGHS defaults
  pgd         + the PGD start (HiGHS defaults otherwise)
  pgd+verify  + HiGHS's presolve and primal heuristics off
  default     + ideal cuts at the root: optprune's default Strategy()
  cuts        ideal cuts alone (no start, HiGHS defaults)
  lp          the default strategy on LP (OBBT) bounds instead of symbolic ones
  scip        SCIP (OR-Tools) with the start and the cuts

Every record (JSON line, --out, resumable) holds the termination, objective, bound, gap,
nodes, bound / prepare / solve times, and whether the witness was verified on the
network in float64. The summary prints per variant: solved within the limit, shifted
geometric mean of the total time (bounds + prepare + solve; a time-out counts as the
limit + bounds), the mean bound time, the adversarial incumbents (objective > 0) whose
witness flips the class in float64, and whether every record is consistent with the
optima proven by any variant (the same optimum; a time-out's incumbent not above it and
its bound not below it).

  python benchmarks/bench_solve_hard.py --archs 300x2,200x3 --images 0,1,2 \\
      --time-limit 120 --out /tmp/hard.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

VARIANTS = ("bare", "pgd", "pgd+verify", "default", "cuts", "lp", "scip")


def _arch(s: str) -> tuple[int, ...]:
    w, n = s.lower().split("x")
    return (int(w),) * int(n)


def strategy_of(variant: str):
    from optprune.encode import NO_STRATEGY, Strategy

    return {
        "bare": ("symbolic", "highs", NO_STRATEGY),
        "pgd": ("symbolic", "highs", Strategy(cuts=None, highs_profile="default")),
        "pgd+verify": ("symbolic", "highs", Strategy(cuts=None, highs_profile="verify")),
        "default": ("symbolic", "highs", Strategy()),
        "cuts": ("symbolic", "highs", Strategy(start=None, highs_profile="default")),
        "lp": ("lp", "highs", Strategy()),
        "scip": ("symbolic", "scip", Strategy()),
    }[variant]


def run_one(net, x0, label, target, radius, variant, time_limit, seed):
    from optprune.encode import AttackSpec, Region, compute_bounds, encode, solve_encoding
    from optprune.solve import SolveOptions

    method, backend, strategy = strategy_of(variant)
    t0 = time.perf_counter()
    region = Region.make(net, x0, "linf", radius, (0.0, 1.0))
    b = compute_bounds(net, region, method)
    enc = encode(net, region, AttackSpec(int(label), int(target), "margin"), b)
    build = time.perf_counter() - t0
    opts = SolveOptions(time_limit_s=time_limit, rel_gap=1e-9, threads=1, seed=seed)
    t1 = time.perf_counter()
    r = solve_encoding(enc, backend, opts, strategy=strategy)
    wall = time.perf_counter() - t1
    st = r.stats
    return {
        "termination": r.termination, "outcome": r.outcome, "objective": r.objective,
        "bound": r.bound, "gap": r.gap, "nodes": r.nodes, "verified": r.verified,
        "binaries": st["binaries"], "bounds_time_s": b.time_s, "build_time_s": build,
        "prepare_time_s": st.get("prepare_time_s", 0.0), "solve_time_s": r.solve_time_s,
        "wall_s": wall, "pgd_margin": st.get("pgd_margin"), "cuts_kept": st.get("cuts_kept"),
        "lp_bound_first": st.get("lp_bound_first"), "lp_bound_last": st.get("lp_bound_last"),
        "solved": r.termination == "optimal",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="300x2,200x3")
    p.add_argument("--images", default="0,1,2")
    p.add_argument("--radius", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=11, help="training / data split seed")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--time-limit", type=float, default=120.0)
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--out", default="bench_solve_hard.jsonl")
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)

    import gc

    import torch

    from optprune.encode import as_network
    from optprune.encode.bench import _append, read_records
    from optprune.encode.prune import accuracy, digits_data, train_mlp

    torch.set_num_threads(1)
    out = Path(args.out)
    done = {r["key"]: r for r in read_records(out) if "key" in r}
    variants = args.variants.split(",")
    images = [int(i) for i in args.images.split(",")]
    data = digits_data(args.seed)
    Xte, yte = data[2], data[3]
    for a in [] if args.summary_only else args.archs.split(","):
        keys = [f"{a}|s{args.seed}|i{i}|{v}|T{args.time_limit:g}" for i in images
                for v in variants]
        if all(k in done for k in keys):
            continue
        model = train_mlp(_arch(a), data[0], data[1], seed=args.seed, epochs=args.epochs)
        acc = accuracy(model, Xte, yte)
        net = as_network(model, (64,))
        gc.collect()
        gc.freeze()
        for i in images:
            x0, label = Xte[i].astype(np.float64), int(yte[i])
            target = int([c for c in np.argsort(-net.forward(x0)) if c != label][0])
            for v in variants:
                key = f"{a}|s{args.seed}|i{i}|{v}|T{args.time_limit:g}"
                if key in done:
                    continue
                rec = {"key": key, "instance": key, "backend": strategy_of(v)[1], "arch": a,
                       "seed": args.seed, "image": i, "label": label, "target": target,
                       "variant": v, "time_limit_s": args.time_limit, "test_accuracy": acc,
                       "load_avg_1min": os.getloadavg()[0],
                       **run_one(net, x0, label, target, args.radius, v, args.time_limit,
                                 0)}
                _append(out, rec)
                done[key] = rec
                print(f"{key}: {rec['termination']} obj {rec['objective']} bound "
                      f"{rec['bound']} prepare {rec['prepare_time_s']:.1f} s solve "
                      f"{rec['solve_time_s']:.1f} s, {rec['nodes']} nodes "
                      f"(load {rec['load_avg_1min']:.1f})", flush=True)
        gc.unfreeze()
    summarize(list(done.values()), args)
    return 0


def consistent(recs: list[dict], tol: float = 1e-6) -> list[bool]:
    """Per record: agrees with every optimum proven for its instance (arch, seed, image) by
    any record: the same optimum if solved, else incumbent <= optimum <= bound (maximize);
    True where nothing is proven."""
    opt: dict[tuple, list[float]] = {}
    for r in recs:
        if r["solved"]:
            opt.setdefault((r["arch"], r["seed"], r["image"]), []).append(r["objective"])
    out = []
    for r in recs:
        o = opt.get((r["arch"], r["seed"], r["image"]))
        if not o:
            out.append(True)
            continue
        lo, hi = min(o), max(o)
        t = tol * max(1.0, abs(lo), abs(hi))
        ok = hi - lo <= t
        if r["solved"]:
            ok = ok and lo - t <= r["objective"] <= hi + t
        else:
            ok = ok and (r["objective"] is None or r["objective"] <= lo + t) and (
                r["bound"] is None or r["bound"] >= hi - t)
        out.append(ok)
    return out


def summarize(recs: list[dict], args: argparse.Namespace) -> None:
    from optprune.encode.bench import shifted_geomean

    recs = [r for r in recs if r["time_limit_s"] == args.time_limit]
    print()
    loads = [r["load_avg_1min"] for r in recs]
    if loads:
        print(f"machine load (1-min average) during the runs: {min(loads):.1f}-"
              f"{max(loads):.1f} on 2 cores")
    print(f"| network | variant | solved in {args.time_limit:g} s | sgm total time (s) | "
          "sgm nodes | mean gap at limit | mean bounds (s) | mean prepare (s) | "
          "witnesses verified | consistent with the proven optima |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = dict(zip([r["key"] for r in recs], consistent(recs), strict=True))
    for a in sorted({r["arch"] for r in recs}, key=lambda s: (len(s), s)):
        rows = [r for r in recs if r["arch"] == a]
        for v in [v for v in VARIANTS if any(r["variant"] == v for r in rows)]:
            g = [r for r in rows if r["variant"] == v]
            t = [r["bounds_time_s"] + (r["prepare_time_s"] + r["solve_time_s"] if r["solved"]
                                       else r["time_limit_s"]) for r in g]
            nodes = [r["nodes"] for r in g if r["nodes"] is not None]
            gaps = [r["gap"] for r in g if not r["solved"] and r["gap"] is not None]
            adv = [r for r in g if r["objective"] is not None and r["objective"] > 0]
            agree = all(ok[r["key"]] for r in g)
            name = "64-" + "-".join(str(w) for w in _arch(a)) + "-10"
            print(f"| {name} | {v} | {sum(r['solved'] for r in g)}/{len(g)} | "
                  f"{shifted_geomean(t, args.shift):.1f} | "
                  f"{shifted_geomean(nodes, 10.0) if nodes else float('nan'):.0f} | "
                  f"{np.mean(gaps) if gaps else 0.0:.3g} | "
                  f"{np.mean([r['bounds_time_s'] for r in g]):.1f} | "
                  f"{np.mean([r['prepare_time_s'] for r in g]):.1f} | "
                  f"{sum(bool(r['verified']) for r in adv)}/{len(adv)} | "
                  f"{'yes' if agree else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())
