"""A trained network as a block of the user's own MIP: optimizing over a regression
surrogate, dense vs pruned (constraint learning, Cacciola et al.'s setting).

Data: scikit-learn's diabetes (442 patients, 10 features: age, sex, bmi, bp, s1-s6;
target: disease progression one year later), features and target standardized, a
seeded 75/25 split. Surrogate: a 10-H-H-1 ReLU MLP (``train_mlp(regression=True)``,
Adam, squared error); pruned: the same net keeping 30% / 50% of the neurons of every
hidden layer (``prune_neurons``, layerwise, norm-product scores) and fine-tuned with the
same recipe. Test R^2 of each.

The user's problem, for a reference test patient x_ref and an intervention budget B:

    max  f(x)                                    (predicted progression)
    s.t. x_j in [min_j, max_j] of the training data       (the block's input box)
         x_sex = x_ref_sex                                (not changeable)
         |x_j - x_ref_j| <= B  (implied by the budget; tightens the block's box)
         d_j >= x_j - x_ref_j,  d_j >= x_ref_j - x_j,  sum_j d_j <= B   (user's rows)

(worst plausible progression within a budget of B standard deviations of change). The
user's model is a ModelBuilder with its own columns d and rows; the network enters with
``optprune.encode.add_network_block`` (named inputs age, sex, ..., output progression,
symbolic bounds over the box): ``optprune.encode.surrogate.budget_problem``. HiGHS, one
thread, gap 1e-9, --time-limit.

Printed per variant (dense / pruned30 / pruned50): test R^2, binaries, solve time
(shifted geometric mean, shift 1 s), solved count, the optimum the variant itself
predicts, and the true value: the DENSE network's prediction at the variant's optimizer,
with the regret (dense optimum minus that true value, in progression units).

  python benchmarks/bench_surrogate.py --hidden 64,64 --patients 0,1,2,3,4 --budgets 1,2 \\
      --seed 0 --time-limit 60 --out /tmp/surrogate.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def solve_user_problem(net, names, lo, hi, x_ref, budget, time_limit):
    """The module docstring's MIP with the network as a block; (result, block, build s)."""
    from optprune.encode.surrogate import budget_problem
    from optprune.solve import SolveOptions, solve

    t0 = time.perf_counter()
    model, blk = budget_problem(net, names, lo, hi, x_ref, budget)
    build = time.perf_counter() - t0
    res = solve(model, "highs", SolveOptions(time_limit_s=time_limit, rel_gap=1e-9, threads=1))
    return res, blk, build, model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", default="64,64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--group-lasso", type=float, default=0.03)
    p.add_argument("--keeps", default="0.3,0.5")
    p.add_argument("--patients", default="0,1,2,3,4")
    p.add_argument("--budgets", default="1,2")
    p.add_argument("--time-limit", type=float, default=300.0)
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--out", default=None, help="JSON-lines file for every solve's record")
    args = p.parse_args(argv)

    import torch

    from optprune.encode import from_torch
    from optprune.encode.bench import shifted_geomean
    from optprune.encode.prune import finetune, prune_neurons, train_mlp
    from optprune.encode.surrogate import diabetes_data, r2_score
    from optprune.encode.attack import run_highs
    from optprune.solve.backends.highs import new_highs

    torch.set_num_threads(1)
    run_highs(new_highs(), 1)  # one HiGHS thread in this process
    Xtr, ytr, Xte, yte, names, (my, sy) = diabetes_data(args.seed)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    dense_t = train_mlp(hidden, Xtr, ytr, seed=args.seed, epochs=args.epochs, lr=1e-3,
                        group_lasso=args.group_lasso, regression=True)
    nets = {"dense": dense_t}
    for kf in [float(k) for k in args.keeps.split(",")]:
        small = prune_neurons(dense_t, kf)
        nets[f"pruned{int(round(kf * 100))}"] = finetune(small, Xtr, ytr, args.finetune_epochs,
                                                         seed=args.seed, regression=True)
    lo, hi = Xtr.min(0), Xtr.max(0)
    dense = from_torch(dense_t)
    rows = {v: [] for v in nets}
    for i in [int(s) for s in args.patients.split(",")]:
        x_ref = np.clip(Xte[i], lo, hi)
        for B in [float(s) for s in args.budgets.split(",")]:
            dense_opt = None
            for v, net_t in nets.items():
                net = from_torch(net_t)
                res, blk, build, model = solve_user_problem(net, names, lo, hi, x_ref, B,
                                                            args.time_limit)
                xs = res.x[blk.input_columns]
                true = float(dense.forward(xs)[0])
                if v == "dense":
                    dense_opt = res.objective if res.termination.value == "optimal" else None
                rec = {"seed": args.seed, "hidden": list(hidden), "model": v,
                       "patient": i, "budget": B, "term": res.termination.value,
                       "obj": res.objective, "bound": res.bound, "time": res.solve_time_s,
                       "build": build, "binaries": model.num_integer, "true": true,
                       "err": blk.forward_error(res.x),
                       "regret": None if dense_opt is None else dense_opt - true}
                rows[v].append(rec)
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(rec, default=float) + "\n")
                print(f"patient {i} B={B:g} {v}: {rec['term']} predicted "
                      f"{my + sy * res.objective:.1f}, dense value at its optimizer "
                      f"{my + sy * true:.1f}, {res.solve_time_s:.2f} s, "
                      f"{model.num_integer} binaries, |y - f(x)| {rec['err']:.1e}", flush=True)
    print()
    print(f"diabetes surrogate 10-{'-'.join(map(str, hidden))}-1, seed {args.seed}, patients "
          f"{args.patients}, budgets {args.budgets} (std units); HiGHS 1 thread, limit "
          f"{args.time_limit:g} s; load {os.getloadavg()[0]:.1f} on 2 cores")
    print("| model | hidden widths | test R^2 | binaries (mean) | solved | sgm solve (s) | "
          "speed-up | mean predicted optimum | mean dense value at its optimizer | "
          "mean / max regret |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = shifted_geomean([r["time"] for r in rows["dense"]], args.shift)
    for v, rs in rows.items():
        widths = [L.out_features for L in nets[v] if isinstance(L, torch.nn.Linear)][:-1]
        sg = shifted_geomean([r["time"] for r in rs], args.shift)
        reg = [r["regret"] for r in rs if r["regret"] is not None]
        print(f"| {v} | {'-'.join(map(str, widths))} | {r2_score(nets[v], Xte, yte):.3f} | "
              f"{np.mean([r['binaries'] for r in rs]):.0f} | "
              f"{sum(r['term'] == 'optimal' for r in rs)}/{len(rs)} | {sg:.2f} | "
              f"{base / sg:.1f}x | {my + sy * np.mean([r['obj'] for r in rs]):.1f} | "
              f"{my + sy * np.mean([r['true'] for r in rs]):.1f} | "
              f"{sy * np.mean(reg):.1f} / {sy * np.max(reg):.1f} |")
    # a variant's optimizer is feasible for the dense problem: its dense value can exceed
    # the proved dense optimum only by the solver's tolerances
    over = [-r["regret"] for rs in rows.values() for r in rs if r["regret"] is not None]
    print(f"largest (dense value at a variant's optimizer - dense optimum): "
          f"{sy * max(over):.2e} progression units")
    return 0


if __name__ == "__main__":
    sys.exit(main())
