"""optprune.encode vs OMLT on the same networks and the same attack (issue #4).

For each digits MLP (trained by optprune.encode.prune.train_mlp, seed 0) and each test
image x0 with true label t, both sides solve the SAME MIP problem:

    max  y_c(x) - y_t(x)   s.t.  max(0, x0 - r) <= x <= min(1, x0 + r),  y = net(x)

for a fixed target class c = the runner-up class of the clean input (second-largest
logit at x0; with --targets all, every class c != t). This is the targeted "runner-up
minus true logit" margin attack; a targeted attack is used so that OMLT needs no extra
max-encoding and both sides optimise the identical objective over the identical set.

optprune: build = compute_bounds(method) + encode() (network -> LinearModel with its
    bounds) + passModel into HiGHS; solve = HiGHS run() (solve_encoding). --bounds takes
    a list: "interval" builds on the same interval bounds OMLT computes (the like-for-like
    build comparison), "lp" spends time on LP tightening to cut binaries.
OMLT: build = NetworkDefinition from the same float64 weights + input bounds,
    ReluBigMFormulation, OmltBlock + Pyomo ConcreteModel with the objective, + the
    Pyomo -> HiGHS translation (appsi set_instance); solve = HiGHS run() on the
    translated model.
Build times are "network in, HiGHS holding the model" on both sides. --build-only skips
the solves (for networks too large to solve, to measure the build ratio).
Both: one HiGHS thread (optprune's solve_encoding rebuilds HiGHS's process-wide scheduler
at the size asked for), mip_rel_gap --gap, same time limit, seed 0. optprune solves with
each of --strategy (a list; "default": optprune's default Strategy(), PGD start + root
ideal cuts + HiGHS's presolve and heuristics off; "none": the bare model under HiGHS's
defaults, as OMLT's); the strategy's time counts as solve time. optprune builds without
column / row names, as attack() does. Solve times are summarised by the geometric mean and
by the shifted geometric mean (shift --shift s; a time-out counts its time to the limit).

  python benchmarks/bench_omlt.py --archs 50x2,100x2 --images 0,1 --radius 0.05 \
      --bounds interval,lp
  python benchmarks/bench_omlt.py --archs 100x2 --images 0,1,2 --bounds symbolic \
      --strategy default,none --time-limit 120
  python benchmarks/bench_omlt.py --archs 300x2,500x2,1000x2 --build-only --bounds interval
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def _arch(s: str) -> tuple[int, ...]:
    w, n = s.lower().split("x")
    return (int(w),) * int(n)


def gmean(v):
    v = [max(float(x), 1e-9) for x in v]
    return math.exp(sum(math.log(x) for x in v) / len(v))


def run_optprune(net, x0, label, target, radius, method, gap, time_limit, build_only=False,
                 strategy="default"):
    from optprune.encode import (
        NO_STRATEGY, AttackSpec, Region, Strategy, compute_bounds, encode, solve_encoding,
    )
    from optprune.solve import SolveOptions
    from optprune.solve.backends.highs import new_highs, pass_model

    t0 = time.perf_counter()
    region = Region.make(net, x0, "linf", radius, (0.0, 1.0))
    spec = AttackSpec(int(label), int(target), "margin")
    b = compute_bounds(net, region, method)
    enc = encode(net, region, spec, b, names=False)  # what attack() builds
    build = time.perf_counter() - t0
    st = enc.stats()
    out = {"build": build, "bounds_time": b.time_s, "binaries": st["binaries"],
           "unstable": st["unstable"], "solve": float("nan"), "obj": None, "bound": None,
           "term": "not solved", "nodes": 0}
    if build_only:
        t1 = time.perf_counter()
        pass_model(new_highs(), enc.model)
        out["translate"] = time.perf_counter() - t1
        return out
    opts = SolveOptions(time_limit_s=time_limit, seed=0, rel_gap=gap, threads=1)
    r = solve_encoding(enc, "highs", opts,
                       strategy=Strategy() if strategy == "default" else NO_STRATEGY)
    # the strategy's PGD start and cut loop count as solve time
    prep = r.stats.get("prepare_time_s", 0.0)
    out.update({"translate": r.build_time_s, "solve": r.solve_time_s + prep, "obj": r.objective,
                "bound": r.bound, "term": r.termination, "nodes": r.nodes, "prepare": prep,
                "verified": r.verified})
    return out


def run_omlt(net, x0, label, target, radius, gap, time_limit, build_only=False):
    import pyomo.environ as pyo
    from omlt import OmltBlock
    from omlt.neuralnet import ReluBigMFormulation
    from pyomo.contrib.appsi.solvers.highs import Highs

    from optprune.encode import to_omlt

    t0 = time.perf_counter()
    lo = np.maximum(0.0, x0 - radius)
    hi = np.minimum(1.0, x0 + radius)
    nd = to_omlt(net, (lo, hi))  # NetworkDefinition: dense layers, the same float64 weights
    m = pyo.ConcreteModel()
    m.nn = OmltBlock()
    m.nn.build_formulation(ReluBigMFormulation(nd))
    m.obj = pyo.Objective(expr=m.nn.outputs[int(target)] - m.nn.outputs[int(label)],
                          sense=pyo.maximize)
    build = time.perf_counter() - t0
    opt = Highs()
    t1 = time.perf_counter()
    opt.set_instance(m)
    translate = time.perf_counter() - t1
    nbin = sum(1 for v in m.component_data_objects(pyo.Var, descend_into=True)
               if v.is_binary())
    if build_only:
        return {"build": build, "translate": translate, "solve": float("nan"), "obj": None,
                "bound": None, "term": "not solved", "binaries": nbin, "nodes": 0}
    h = opt._solver_model  # the highspy.Highs object appsi built
    h.setOptionValue("output_flag", False)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("mip_rel_gap", float(gap))
    if time_limit:
        h.setOptionValue("time_limit", float(time_limit))
    from optprune.encode.attack import run_highs

    t2 = time.perf_counter()
    run_highs(h, 1)  # one thread, as optprune's side
    solve = time.perf_counter() - t2
    info = h.getInfo()
    status = h.modelStatusToString(h.getModelStatus())
    # appsi passes the objective with its own sense; read the value HiGHS reports
    obj = info.objective_function_value
    return {"build": build, "translate": translate, "solve": solve, "obj": obj,
            "bound": info.mip_dual_bound, "term": status, "binaries": nbin,
            "nodes": int(info.mip_node_count)}


def _fmt(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.9g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="50x2,100x2")
    p.add_argument("--images", default="0,1")
    p.add_argument("--radius", type=float, default=0.05)
    p.add_argument("--targets", default="runner-up", choices=["runner-up", "all"])
    p.add_argument("--bounds", default="interval,lp", help="optprune bounds methods (list)")
    p.add_argument("--gap", type=float, default=1e-9, help="mip_rel_gap both sides")
    p.add_argument("--time-limit", type=float, default=300.0)
    p.add_argument("--build-only", action="store_true", help="no solves: build times only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", default="default",
                   help="optprune strategies (list of default, none)")
    p.add_argument("--shift", type=float, default=1.0, help="sgm shift of the solve times (s)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--json", default=None, help="write every record to this JSON file")
    args = p.parse_args(argv)
    strategies = args.strategy.split(",")
    bad = [s for s in strategies if s not in ("default", "none")]
    if bad:
        p.error(f"--strategy takes a list of 'default' and 'none'; got {bad}")

    import gc
    import json
    import logging

    import torch

    from optprune.encode import as_network

    logging.getLogger("pyomo").setLevel(logging.ERROR)  # OMLT's var initialisation warnings
    from optprune.encode.bench import shifted_geomean
    from optprune.encode.prune import accuracy, digits_data, train_mlp

    torch.set_num_threads(1)
    methods = args.bounds.split(",")
    # a variant is bounds method x strategy; the bare variant is named "<method>+none"
    variants = {(m if s == "default" else f"{m}+{s}"): (m, s) for m in methods
                for s in strategies}
    data = digits_data(args.seed)
    Xte, yte = data[2], data[3]
    images = [int(i) for i in args.images.split(",")]
    rows = []
    for a in args.archs.split(","):
        arch = _arch(a)
        model = train_mlp(arch, data[0], data[1], seed=args.seed, epochs=args.epochs)
        acc = accuracy(model, Xte, yte)
        net = as_network(model, (64,))
        name = "64-" + "-".join(str(w) for w in arch) + "-10"
        gc.collect()
        gc.freeze()  # keep collector pauses out of the build timings (both sides)
        recs = []
        for i in images:
            x0, label = Xte[i].astype(np.float64), int(yte[i])
            logits = net.forward(x0)
            if args.targets == "all":
                targets = [c for c in range(net.output_dim) if c != label]
            else:
                order = [c for c in np.argsort(-logits) if c != label]
                targets = [int(order[0])]
            for c in targets:
                ops = {v: run_optprune(net, x0, label, c, args.radius, m, args.gap,
                                       args.time_limit, args.build_only, s)
                       for v, (m, s) in variants.items()}
                om = run_omlt(net, x0, label, c, args.radius, args.gap, args.time_limit,
                              args.build_only)
                for d in (*ops.values(), om):  # no incumbent (time limit): nan, not None
                    d["obj"] = float("nan") if d["obj"] is None else float(d["obj"])
                    d["bound"] = float("nan") if d["bound"] is None else float(d["bound"])
                rec = {"arch": name, "image": i, "label": label, "target": c, "om": om,
                       "op": ops}
                for m, op in ops.items():
                    both = op["term"] == "optimal" and om["term"] == "Optimal"
                    diff = abs(op["obj"] - om["obj"]) / max(1.0, abs(op["obj"]), abs(om["obj"]))
                    rec[m] = {"both_optimal": both, "rel_diff": diff,
                              "agree": both and diff <= 1e-6}
                recs.append(rec)
                line = [f"{name} img {i} (label {label}) target {c}:"]
                for m, op in ops.items():
                    line.append(f"optprune[{m}] build {op['build']:.3f}s "
                                f"(bounds {op['bounds_time']:.3f}s) +HiGHS "
                                f"{op['translate']:.3f}s solve {op['solve']:.3f}s obj "
                                f"{_fmt(op['obj'])} bound {_fmt(op['bound'])} [{op['term']}, "
                                f"{op['binaries']} bin, {op['nodes']} nodes] |")
                line.append(f"OMLT build {om['build']:.3f}s +HiGHS {om['translate']:.3f}s "
                            f"solve {om['solve']:.3f}s obj {_fmt(om['obj'])} bound "
                            f"{_fmt(om['bound'])} [{om['term']}, {om['binaries']} bin, "
                            f"{om['nodes']} nodes]")
                print(" ".join(line), flush=True)
        gc.unfreeze()
        rows.append((name, acc, recs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"arch": n, "test_accuracy": acc, "records": r} for n, acc, r in rows],
                      f, indent=1, default=float)

    print()
    print(f"optprune.encode vs OMLT (ReluBigMFormulation, interval bounds), digits MLPs seed "
          f"{args.seed}, images {images}, L-inf r={args.radius:g}, targeted margin "
          f"max y_c - y_t (c = {args.targets}); one HiGHS thread, mip_rel_gap "
          f"{args.gap:g}, limit {args.time_limit:g} s; build = network in, HiGHS holding the "
          f"model; geometric means over the {len(images)} images x targets, sgm = shifted "
          f"geometric mean (shift {args.shift:g} s); ratios OMLT / optprune; variant = "
          f"optprune bounds, '+none' = bare model (no strategy)")
    print("| network | test acc | n | optprune variant | binaries optprune / OMLT | "
          "build optprune (s) | build OMLT (s) | build ratio | solve optprune (s) | "
          "solve OMLT (s) | solve ratio | sgm solve optprune / OMLT (s) | sgm ratio | "
          "optima agree (max rel diff) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, acc, recs in rows:
        bm = gmean([r["om"]["build"] + r["om"]["translate"] for r in recs])
        sm = gmean([r["om"]["solve"] for r in recs]) if not args.build_only else None
        ssm = (shifted_geomean([r["om"]["solve"] for r in recs], args.shift)
               if not args.build_only else None)
        to_m = sum(r["om"]["term"] != "Optimal" for r in recs)
        for m in variants:
            bo = gmean([r["op"][m]["build"] + r["op"][m]["translate"] for r in recs])
            nb = (np.mean([r["op"][m]["binaries"] for r in recs]),
                  np.mean([r["om"]["binaries"] for r in recs]))
            if args.build_only:
                solve_cols = "- | - | - | - | - | -"
            else:
                so = gmean([r["op"][m]["solve"] for r in recs])
                sso = shifted_geomean([r["op"][m]["solve"] for r in recs], args.shift)
                to_o = sum(r["op"][m]["term"] != "optimal" for r in recs)
                sto = f" ({to_o} time-outs)" if to_o else ""
                stm = f" ({to_m} time-outs)" if to_m else ""
                none = to_o == len(recs) and to_m == len(recs)
                ratio = "n/a" if none else f"{sm / so:.1f}x"
                sratio = "n/a" if none else f"{ssm / sso:.1f}x"
                agree = sum(r[m]["agree"] for r in recs)
                nboth = sum(r[m]["both_optimal"] for r in recs)
                md = max((r[m]["rel_diff"] for r in recs if r[m]["both_optimal"]), default=0.0)
                ag = (f"{agree}/{nboth} proven on both ({md:.1e})" if nboth else
                      f"0/{len(recs)} proven on both")
                solve_cols = (f"{so:.3f}{sto} | {sm:.3f}{stm} | {ratio} | {sso:.3f} / "
                              f"{ssm:.3f} | {sratio} | {ag}")
            print(f"| {name} | {acc:.4f} | {len(recs)} | {m} | {nb[0]:.0f} / {nb[1]:.0f} | "
                  f"{bo:.4f} | {bm:.3f} | {bm / bo:.1f}x | {solve_cols} |")

    return 0


if __name__ == "__main__":
    sys.exit(main())
