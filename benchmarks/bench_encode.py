"""Encoder benchmarks, measured side by side in one run (formulations/adversarial.md).

Two experiments, each appending JSON lines to --out (rerun the same command to resume:
finished rows are skipped):

  dense-vs-pruned (default): Cacciola et al. at small scale on digits. For each arch and
      seed: train a 64-hidden-10 ReLU MLP (seeded), prune by neuron magnitude to --keep of
      every hidden layer (layerwise) and/or to the same parameter count with the exact
      allocation (--selections layerwise,exact), fine-tune; then for each test image and
      attack, solve the untargeted margin MIP of the dense and of the pruned net with
      HiGHS on one thread under --time-limit (--bounds, LP by default; --strategy none: the
      bare model, as in the recorded tables; default: attack()'s Strategy(), PGD start and
      root ideal cuts, their time counted as solve time). Prints test accuracy, solved counts, shifted
      geometric mean of the solve time (time-outs count as the limit) and the
      dense/pruned ratio, pooled over seeds and images.

  (The OMLT comparison is benchmarks/bench_omlt.py.)

  ablation: one network, bounds naive | interval | symbolic | lp | progressive: binaries, stable
      neurons, bound time, build time, solve time.

Examples:
  python benchmarks/bench_encode.py --archs 50x2,100x2 --images 0,1,2 \\
      --attacks linf:0.05,l1:2 --time-limit 60
  python benchmarks/bench_encode.py ablation --arch 100x2 --images 0,1 --attack l1:2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _arch(s: str) -> tuple[int, ...]:
    w, n = s.lower().split("x")
    return (int(w),) * int(n)


def _attacks(s: str) -> list[tuple[str, float]]:
    out = []
    for part in s.split(","):
        norm, r = part.split(":")
        out.append((norm, float(r)))
    return out


def _done(path: Path) -> dict[str, dict]:
    from optprune.encode.bench import read_records

    return {r["key"]: r for r in read_records(path) if "key" in r}


def _append(path: Path, rec: dict) -> None:
    from optprune.encode.bench import _append as append

    append(path, rec)


def _solve(net_t, x0, label, norm, radius, bounds, time_limit_s, objective, strategy="none"):
    from optprune.encode import NO_STRATEGY, Strategy, attack

    t0 = time.perf_counter()
    r = attack(net_t, x0, label, radius=radius, norm=norm, bounds=bounds,
               objective=objective, time_limit_s=time_limit_s, threads=1,
               strategy=Strategy() if strategy == "default" else NO_STRATEGY)
    solved = r.termination in ("optimal", "infeasible", "solution_limit")
    return {
        "outcome": r.outcome, "termination": r.termination, "solved": solved,
        "objective": r.objective, "bound": r.bound, "verified": r.verified,
        "binaries": r.stats["binaries"], "unstable": r.stats["unstable"],
        "stable": r.stats["stable"], "columns": r.stats["columns"],
        "rows": r.stats["rows"], "nonzeros": r.stats["nonzeros"],
        "bounds_time_s": r.bounds_time_s, "build_time_s": r.build_time_s,
        "solve_time_s": r.solve_time_s + r.stats.get("prepare_time_s", 0.0), "nodes": r.nodes,
        "wall_s": time.perf_counter() - t0,
    }


def _variant(selection: str, keep: float) -> str:
    # "pruned30": the same fraction of every hidden layer; "exact30": the exact
    # allocation at the same parameter count (optprune.encode.prune)
    return f"{'pruned' if selection == 'layerwise' else selection}{int(round(keep * 100))}"


def _setup(args: argparse.Namespace) -> str:
    """The record key's suffix for the bounds / strategy of a run: empty for the setup the
    recorded tables used (lp, none), so that their records still resume."""
    return "" if (args.bounds, args.strategy) == ("lp", "none") else (
        f"|B{args.bounds}|S{args.strategy}")


def dense_vs_pruned(args: argparse.Namespace) -> None:
    import torch

    from optprune.encode.prune import (
        accuracy, describe_selection, digits_data, prune_and_finetune, train_mlp,
    )

    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    images = [int(i) for i in args.images.split(",")]
    attacks = _attacks(args.attacks)
    selections = args.selections.split(",")
    for seed in [] if args.summary_only else [int(s) for s in args.seeds.split(",")]:
        data = digits_data(seed)
        Xte, yte = data[2], data[3]
        for a in args.archs.split(","):
            arch = _arch(a)
            variants = ["dense"] + [_variant(sel, args.keep) for sel in selections]
            keys = [f"dvp|{a}|s{seed}|{v}|i{i}|{n}:{r:g}|T{args.time_limit:g}{_setup(args)}"
                    for v in variants for i in images for n, r in attacks]
            if all(k in done for k in keys):
                continue
            dense = train_mlp(arch, data[0], data[1], seed=seed, epochs=args.epochs,
                              group_lasso=args.group_lasso)
            nets = {"dense": (dense, accuracy(dense, Xte, yte), list(arch), None)}
            for sel in selections:
                pruned, rep = prune_and_finetune(dense, args.keep, data, seed=seed,
                                                 finetune_epochs=args.finetune_epochs,
                                                 selection=sel,
                                                 time_limit_s=args.selection_time_limit,
                                                 require_optimal=args.require_optimal)
                print(f"{a} s{seed} {sel}: widths {rep.hidden_after}, selection "
                      f"{describe_selection(rep.allocation)}", flush=True)
                nets[_variant(sel, args.keep)] = (pruned, rep.test_accuracy_after,
                                                  rep.hidden_after, rep.allocation)
            for v, (net, acc, hidden, alloc) in nets.items():
                for i in images:
                    for norm, r in attacks:
                        key = (f"dvp|{a}|s{seed}|{v}|i{i}|{norm}:{r:g}|T{args.time_limit:g}"
                               f"{_setup(args)}")
                        if key in done:
                            continue
                        rec = {"key": key, "instance": key, "backend": "highs", "arch": a,
                               "seed": seed, "variant": v, "image": i, "norm": norm,
                               "radius": r, "time_limit_s": args.time_limit,
                               "test_accuracy": acc, "keep": args.keep, "hidden": hidden,
                               "allocation": alloc,
                               "bounds": args.bounds, "strategy": args.strategy,
                               **_solve(net, Xte[i], int(yte[i]), norm, r, args.bounds,
                                        args.time_limit, args.objective, args.strategy)}
                        _append(out, rec)
                        done[key] = rec
                        print(f"{key}: {rec['termination']} {rec['outcome']} "
                              f"{rec['solve_time_s']:.2f} s, {rec['binaries']} binaries",
                              flush=True)
    summarize(done, args, attacks, selections)


def summarize(done: dict, args: argparse.Namespace, attacks: list, selections: list[str]) -> None:
    """One row per (arch, attack, pruned variant), pooled over seeds and images."""
    from optprune.encode.bench import shifted_geomean

    rows = [r for r in done.values() if r["key"].startswith("dvp|")
            and r["time_limit_s"] == args.time_limit
            and r.get("bounds", "lp") == args.bounds and r.get("strategy", "none") == args.strategy]
    seeds = sorted({r["seed"] for r in rows})
    print()
    print(f"dense vs pruned (keep {args.keep:g}), HiGHS, time limit {args.time_limit:g} s, "
          f"bounds {args.bounds}, strategy {args.strategy}, seeds {seeds}, "
          f"shifted geometric mean with shift {args.shift:g} s")
    print("| arch | attack | pruning | hidden widths | acc dense | acc pruned | worst drop | "
          "solved dense | solved pruned | sgm dense (s) | sgm pruned (s) | speed-up | "
          "binaries dense / pruned |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def acc_by_seed(g: list[dict]) -> dict[int, float]:
        return {x["seed"]: x["test_accuracy"] for x in g}

    for a in args.archs.split(","):
        for norm, r in attacks:
            for sel in selections:
                pv = _variant(sel, args.keep)
                grp = {v: [x for x in rows if x["arch"] == a and x["norm"] == norm
                           and x["radius"] == r and x["variant"] == v] for v in ("dense", pv)}
                if not grp["dense"] or not grp[pv]:
                    continue
                t = {v: [x["solve_time_s"] if x["solved"] else x["time_limit_s"] for x in g]
                     for v, g in grp.items()}
                sg = {v: shifted_geomean(t[v], args.shift) for v in t}
                accs = {v: acc_by_seed(g) for v, g in grp.items()}
                acc = {v: np.mean(list(d.values())) for v, d in accs.items()}
                drop = max(accs["dense"][s] - accs[pv][s] for s in accs[pv] if s in accs["dense"])
                sol = {v: f"{sum(x['solved'] for x in g)}/{len(g)}" for v, g in grp.items()}
                bins = {v: np.mean([x["binaries"] for x in g]) for v, g in grp.items()}
                widths = sorted({"-".join(map(str, x.get("hidden") or [])) for x in grp[pv]})
                print(f"| 64-{a}-10 | {norm} r={r:g} | {sel} | {', '.join(widths)} | "
                      f"{acc['dense']:.4f} | {acc[pv]:.4f} | {100 * drop:+.1f} pt | "
                      f"{sol['dense']} | {sol[pv]} | {sg['dense']:.2f} | {sg[pv]:.2f} | "
                      f"{sg['dense'] / sg[pv]:.2f}x | {bins['dense']:.0f} / {bins[pv]:.0f} |")
    unproven = sorted({(x["arch"], x["seed"], x["variant"], x["allocation"].get("gap"))
                       for x in rows if x.get("allocation") and not x["allocation"].get(
                           "proven", x["allocation"].get("status") == "optimal")},
                      key=str)
    for a, seed, v, gap in unproven:
        print(f"selection NOT proven optimal (incumbent used): {a} seed {seed} {v}, gap {gap}")
    for sel in selections:
        pv = _variant(sel, args.keep)
        tout = [x["key"] for x in rows if x["variant"] == "dense" and not x["solved"]]
        rescued = [k for k in tout if done.get(k.replace("|dense|", f"|{pv}|"), {}).get("solved")]
        print(f"{sel}: dense time-outs: {len(tout)}; of these solved when pruned: {len(rescued)}")


def ablation(args: argparse.Namespace) -> None:
    import torch

    from optprune.encode.prune import digits_data, train_mlp

    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    data = digits_data(args.seed)
    Xte, yte = data[2], data[3]
    net = train_mlp(_arch(args.arch), data[0], data[1], seed=args.seed, epochs=args.epochs,
                    group_lasso=args.group_lasso)
    norm, r = _attacks(args.attack)[0]
    images = [int(i) for i in args.images.split(",")]
    methods = args.methods.split(",")
    for i in images:
        for m in methods:
            key = f"abl|{args.arch}|s{args.seed}|i{i}|{norm}:{r:g}|{m}|T{args.time_limit:g}"
            if key in done:
                continue
            rec = {"key": key, "instance": key, "backend": "highs", "arch": args.arch,
                   "image": i, "method": m, "norm": norm, "radius": r,
                   "time_limit_s": args.time_limit,
                   **_solve(net, Xte[i], int(yte[i]), norm, r, m, args.time_limit,
                            args.objective)}
            _append(out, rec)
            done[key] = rec
            print(f"{key}: {rec['termination']} {rec['solve_time_s']:.2f} s", flush=True)
    print()
    print(f"bound ablation, 64-{args.arch}-10, {norm} r={r:g}, HiGHS, time limit "
          f"{args.time_limit:g} s; mean over images {images}")
    print("| bounds | binaries | stable neurons | bound time (s) | build time (s) | "
          "solved | sgm solve time (s) |")
    print("|---|---|---|---|---|---|---|")
    from optprune.encode.bench import shifted_geomean

    for m in methods:
        g = [x for x in done.values() if x["key"].startswith(f"abl|{args.arch}|s{args.seed}|")
             and x["method"] == m and x["norm"] == norm and x["radius"] == r
             and x["image"] in images and x["time_limit_s"] == args.time_limit]
        if not g:
            continue
        t = [x["solve_time_s"] if x["solved"] else x["time_limit_s"] for x in g]
        print(f"| {m} | {np.mean([x['binaries'] for x in g]):.1f} | "
              f"{np.mean([x['stable'] for x in g]):.1f} | "
              f"{np.mean([x['bounds_time_s'] for x in g]):.3f} | "
              f"{np.mean([x['build_time_s'] for x in g]):.4f} | "
              f"{sum(x['solved'] for x in g)}/{len(g)} | {shifted_geomean(t, args.shift):.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", nargs="?", default="dense-vs-pruned",
                   choices=["dense-vs-pruned", "ablation"])
    p.add_argument("--archs", default="50x2,100x2")
    p.add_argument("--arch", default="50x2", help="ablation: one arch")
    p.add_argument("--seeds", default="0")
    p.add_argument("--seed", type=int, default=0, help="ablation: one seed")
    p.add_argument("--images", default="0,1,2")
    p.add_argument("--attacks", default="linf:0.05,l1:2")
    p.add_argument("--attack", default="l1:2", help="ablation: one attack")
    p.add_argument("--methods", default="naive,interval,symbolic,lp,progressive")
    p.add_argument("--objective", default="margin", choices=["margin", "decision"])
    from optprune.encode.bounds import METHODS

    p.add_argument("--bounds", default="lp", choices=list(METHODS),
                   help="dense-vs-pruned: bounds method (lp, the tables recorded before; "
                   "symbolic, attack()'s default now)")
    p.add_argument("--strategy", default="none", choices=["none", "default"],
                   help="dense-vs-pruned: the bare model (none) or attack()'s Strategy()")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--selections", default="layerwise",
                   help="comma list of layerwise (same fraction per layer) and exact "
                        "(allocation at the same parameter count)")
    p.add_argument("--selection-time-limit", type=float, default=60.0,
                   help="time limit (s) of the exact neuron selection")
    p.add_argument("--require-optimal", action="store_true",
                   help="refuse an exact selection the solver did not prove optimal")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--finetune-epochs", type=int, default=20)
    p.add_argument("--group-lasso", type=float, default=1e-4)
    p.add_argument("--time-limit", type=float, default=60.0)
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--out", default="bench_encode.jsonl")
    p.add_argument("--summary-only", action="store_true",
                   help="dense-vs-pruned: print the summary of --out without running")
    args = p.parse_args(argv)
    if args.experiment == "ablation":
        ablation(args)
    else:
        dense_vs_pruned(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
