"""optprune.encode vs OMLT on the same networks and the same attack (issue #4).

For each digits MLP (trained by optprune.encode.prune.train_mlp, seed 0) and each test
image x0 with true label t, both sides solve the SAME MIP problem:

    max  y_c(x) - y_t(x)   s.t.  max(0, x0 - r) <= x <= min(1, x0 + r),  y = net(x)

for a fixed target class c = the runner-up class of the clean input (second-largest
logit at x0; with --targets all, every class c != t). This is the targeted "runner-up
minus true logit" margin attack; a targeted attack is used so that OMLT needs no extra
max-encoding and both sides optimise the identical objective over the identical set.

optprune: build = compute_bounds(method) + encode() (network -> LinearModel with its
    bounds); solve = HiGHS run() (solve_encoding).
OMLT: build = NetworkDefinition from the same float64 weights + input bounds,
    ReluBigMFormulation, OmltBlock + Pyomo ConcreteModel with the objective; the
    Pyomo -> HiGHS translation (appsi set_instance) is reported separately; solve =
    HiGHS run() on the translated model.
Both: HiGHS default thread count (the pool is shared in one process; forcing threads=1
after optprune's LP bounds made run() return an error), mip_rel_gap --gap, same time limit, seed 0.

  python benchmarks/bench_omlt.py --archs 50x2,100x2 --images 0,1 --radius 0.05
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def _arch(s: str) -> tuple[int, ...]:
    w, n = s.lower().split("x")
    return (int(w),) * int(n)


def gmean(v):
    v = [max(float(x), 1e-9) for x in v]
    return math.exp(sum(math.log(x) for x in v) / len(v))


def run_optprune(net, x0, label, target, radius, method, gap, time_limit):
    from optprune.encode import AttackSpec, Region, compute_bounds, encode, solve_encoding
    from optprune.solve import SolveOptions

    t0 = time.perf_counter()
    region = Region.make(net, x0, "linf", radius, (0.0, 1.0))
    spec = AttackSpec(int(label), int(target), "margin")
    b = compute_bounds(net, region, method)
    enc = encode(net, region, spec, b)
    build = time.perf_counter() - t0
    opts = SolveOptions(time_limit_s=time_limit, seed=0, rel_gap=gap)
    r = solve_encoding(enc, "highs", opts)
    st = enc.stats()
    return {"build": build, "bounds_time": b.time_s, "solve": r.solve_time_s,
            "obj": r.objective, "bound": r.bound, "term": r.termination,
            "binaries": st["binaries"], "unstable": st["unstable"], "nodes": r.nodes}


def run_omlt(net, x0, label, target, radius, gap, time_limit):
    import pyomo.environ as pyo
    from omlt import OmltBlock
    from omlt.neuralnet import NetworkDefinition, ReluBigMFormulation
    from omlt.neuralnet.layer import DenseLayer, InputLayer
    from pyomo.contrib.appsi.solvers.highs import Highs

    t0 = time.perf_counter()
    lo = np.maximum(0.0, x0 - radius)
    hi = np.minimum(1.0, x0 + radius)
    n0 = net.input_dim
    nd = NetworkDefinition(scaled_input_bounds={i: (float(lo[i]), float(hi[i]))
                                                for i in range(n0)})
    prev = InputLayer([n0])
    nd.add_layer(prev)
    for L in net.layers:
        layer = DenseLayer(prev.output_size, [L.out_features], L.W.T.copy(), L.b.copy(),
                           activation="relu" if L.relu else "linear")
        nd.add_layer(layer)
        nd.add_edge(prev, layer)
        prev = layer
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
    h = opt._solver_model  # the highspy.Highs object appsi built
    h.setOptionValue("output_flag", False)
    h.setOptionValue("random_seed", 0)
    h.setOptionValue("mip_rel_gap", float(gap))
    if time_limit:
        h.setOptionValue("time_limit", float(time_limit))
    t2 = time.perf_counter()
    h.run()
    solve = time.perf_counter() - t2
    info = h.getInfo()
    status = h.modelStatusToString(h.getModelStatus())
    # appsi passes the objective with its own sense; read the value HiGHS reports
    obj = info.objective_function_value
    nbin = sum(1 for v in m.component_data_objects(pyo.Var, descend_into=True)
               if v.is_binary())
    return {"build": build, "translate": translate, "solve": solve, "obj": obj,
            "bound": info.mip_dual_bound, "term": status, "binaries": nbin,
            "nodes": int(info.mip_node_count)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default="50x2,100x2")
    p.add_argument("--images", default="0,1")
    p.add_argument("--radius", type=float, default=0.05)
    p.add_argument("--targets", default="runner-up", choices=["runner-up", "all"])
    p.add_argument("--bounds", default="lp", help="optprune bounds method")
    p.add_argument("--gap", type=float, default=1e-9, help="mip_rel_gap both sides")
    p.add_argument("--time-limit", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    args = p.parse_args()

    import logging

    import torch

    from optprune.encode import as_network

    logging.getLogger("pyomo").setLevel(logging.ERROR)  # OMLT's var initialisation warnings
    from optprune.encode.prune import accuracy, digits_data, train_mlp

    torch.set_num_threads(1)
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
                op = run_optprune(net, x0, label, c, args.radius, args.bounds, args.gap,
                                  args.time_limit)
                om = run_omlt(net, x0, label, c, args.radius, args.gap, args.time_limit)
                both_opt = op["term"] == "optimal" and om["term"] == "Optimal"
                for d in (op, om):  # no incumbent (time limit): nan, not None
                    d["obj"] = float("nan") if d["obj"] is None else float(d["obj"])
                    d["bound"] = float("nan") if d["bound"] is None else float(d["bound"])
                diff = abs(op["obj"] - om["obj"]) / max(1.0, abs(op["obj"]), abs(om["obj"]))
                rec = {"arch": name, "image": i, "label": label, "target": c,
                       "op": op, "om": om, "rel_diff": diff, "both_optimal": both_opt,
                       "agree": both_opt and diff <= 1e-6}
                recs.append(rec)
                print(f"{name} img {i} (label {label}) target {c}: "
                      f"optprune build {op['build']:.3f}s (bounds {op['bounds_time']:.3f}s) "
                      f"solve {op['solve']:.3f}s obj {op['obj']:.9g} bound {op['bound']:.9g} "
                      f"[{op['term']}, "
                      f"{op['binaries']} bin, {op['nodes']} nodes] | "
                      f"OMLT build {om['build']:.3f}s + translate {om['translate']:.3f}s "
                      f"solve {om['solve']:.3f}s obj {om['obj']:.9g} bound {om['bound']:.9g} "
                      f"[{om['term']}, "
                      f"{om['binaries']} bin, {om['nodes']} nodes] | rel diff {diff:.2e}",
                      flush=True)
        rows.append((name, acc, recs))

    print()
    print(f"optprune.encode ({args.bounds} bounds) vs OMLT (ReluBigMFormulation, interval "
          f"bounds), digits MLPs seed {args.seed}, images {images}, L-inf r={args.radius:g}, "
          f"targeted margin max y_c - y_t (c = {args.targets}); HiGHS default threads, "
          f"mip_rel_gap {args.gap:g}; geometric means over the {len(images)} images x targets")
    print("| network | test acc | n | binaries optprune / OMLT | build optprune (s) | "
          "build OMLT (s) [+ to HiGHS] | build ratio | solve optprune (s) | solve OMLT (s) | "
          "solve ratio | optima agree (max rel diff) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, acc, recs in rows:
        bo = gmean([r["op"]["build"] for r in recs])
        bm = gmean([r["om"]["build"] for r in recs])
        tm = gmean([r["om"]["translate"] for r in recs])
        so = gmean([r["op"]["solve"] for r in recs])
        sm = gmean([r["om"]["solve"] for r in recs])
        nb = (np.mean([r["op"]["binaries"] for r in recs]),
              np.mean([r["om"]["binaries"] for r in recs]))
        agree = sum(r["agree"] for r in recs)
        md = max(r["rel_diff"] for r in recs)
        to_o = sum(r["op"]["term"] != "optimal" for r in recs)
        to_m = sum(r["om"]["term"] != "Optimal" for r in recs)
        sto = f" ({to_o} time-outs)" if to_o else ""
        stm = f" ({to_m} time-outs)" if to_m else ""
        ratio = "n/a" if to_o == len(recs) and to_m == len(recs) else f"{sm / so:.1f}x"
        nboth = sum(r["both_optimal"] for r in recs)
        ag = (f"{agree}/{len(recs)} ({md:.1e})" if nboth else
              f"0/{len(recs)}: not solved (incumbents differ by {md:.1e})")
        print(f"| {name} | {acc:.4f} | {len(recs)} | {nb[0]:.0f} / {nb[1]:.0f} | {bo:.3f} | "
              f"{bm:.3f} [+{tm:.3f}] | {bm / bo:.1f}x | {so:.3f}{sto} | {sm:.3f}{stm} | "
              f"{ratio} | {ag} |")


if __name__ == "__main__":
    main()
