"""SPRINT benchmark: (1) the subset solver, exact forms side by side; (2) best-of-N
accuracy at N = 1, 2, 4, 8, 16 by difficulty, SPRINT-style exact diverse subsets vs plain
best-of-N sampling vs random heads vs top-N by alignment.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sprint.py \
        --model-cache /tmp/sprint_model.pt --json /tmp/sprint.json

(1) Instances shaped like the experiment's: C configurations whose answers agree within
latent groups (D = disagreement rate over 200 simulated questions), p_i in [0.2, 0.95],
costs = dense minus pruned heads, budget 0.95 N dense runs. Each instance is solved by
HiGHS on the strengthened MILP (RLT rows), HiGHS on the standard rows only (with a time
limit), CP-SAT (scale 1e4) and greedy; objectives are compared with the strengthened
HiGHS optimum.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def solver_instances(count: int, c: int, n: int, seed: int, lam: float = 0.5):
    from optprune.sprint.subset import SubsetProblem

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        groups = rng.integers(0, 5, c)
        base = rng.integers(0, 7, (200, 5))
        ans = base[:, groups].copy()
        flip = rng.random((200, c)) < rng.uniform(0.05, 0.4, c)
        ans[flip] = rng.integers(0, 7, int(flip.sum()))
        d = (ans[:, :, None] != ans[:, None, :]).mean(0)
        p = rng.uniform(0.2, 0.95, c)
        pruned = np.r_[0, np.ones(c // 2 - 1), 2 * np.ones(c - c // 2)][:c]
        costs = (40_000 - 2_500 * pruned).astype(int)
        out.append(SubsetProblem(p, d, n, lam, costs, 0.95 * n * 40_000))
    return out


def bench_solvers(args) -> list[dict]:
    from optprune.errors import SolverError
    from optprune.sprint.subset import greedy, solve_cpsat, solve_milp

    rows = []
    for c in args.sizes:
        for n in (2, 4, 8, 16):
            if n >= c:
                continue
            probs = solver_instances(args.solver_instances, c, n, seed=c * 100 + n, lam=args.lam)
            rec = {"C": c, "N": n, "instances": len(probs)}
            for name, fn in [
                ("highs_rlt", lambda p: solve_milp(p, "highs", strengthen=True)),
                ("highs_standard", lambda p: solve_milp(p, "highs", strengthen=False,
                                                        time_limit_s=args.weak_time_limit)),
                ("cpsat_rlt", lambda p: solve_cpsat(p, strengthen=True)),
                ("greedy", greedy),
            ]:
                times, objs, opt, none = [], [], 0, 0
                for p in probs:
                    t0 = time.perf_counter()
                    try:
                        s = fn(p)
                        objs.append(s.objective)
                        opt += int(s.optimal)
                    except SolverError:  # time limit before any incumbent
                        objs.append(-np.inf)
                        none += 1
                    times.append(time.perf_counter() - t0)
                rec[name] = {"mean_s": float(np.mean(times)), "max_s": float(np.max(times)),
                             "proven_optimal": opt, "no_solution": none, "objective": objs}
            ref = np.array(rec["highs_rlt"]["objective"])
            for name in ("highs_standard", "cpsat_rlt", "greedy"):
                o = np.array(rec[name]["objective"])
                found = np.isfinite(o)
                rec[name]["max_shortfall"] = float(np.max(ref[found] - o[found])) if found.any() \
                    else None
                rec[name]["shortfall_count"] = int(np.sum(ref[found] - o[found] > 1e-6))
            for name in ("highs_rlt", "highs_standard", "cpsat_rlt", "greedy"):
                rec[name].pop("objective")
            rows.append(rec)
            print(f"C={c:3d} N={n:2d}: " + "; ".join(
                f"{k} {rec[k]['mean_s']:.3f}/{rec[k]['max_s']:.3f} s opt {rec[k]['proven_optimal']}"
                + (f" none {rec[k]['no_solution']}" if rec[k]["no_solution"] else "")
                + (f" short {rec[k]['shortfall_count']} (max {rec[k]['max_shortfall'] or 0:.4f})"
                   if "max_shortfall" in rec[k] else "")
                for k in ("highs_rlt", "highs_standard", "cpsat_rlt", "greedy")), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-cache", default=None, help="load/save the trained model here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-questions", type=int, default=300)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--budget-fraction", type=float, default=1.0)
    ap.add_argument("--backend", default="highs")
    ap.add_argument("--solver-instances", type=int, default=5)
    ap.add_argument("--sizes", type=lambda s: [int(t) for t in s.split(",")], default=[32, 64])
    ap.add_argument("--weak-time-limit", type=float, default=20.0)
    ap.add_argument("--skip-solvers", action="store_true")
    ap.add_argument("--skip-experiment", action="store_true")
    ap.add_argument("--json", default=None, help="write all figures here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    out: dict = {}
    if not args.skip_solvers:
        print("== subset solver (mean/max seconds, proven optimal, shortfall vs exact) ==")
        out["solvers"] = bench_solvers(args)
    if not args.skip_experiment:
        from optprune.sprint.experiment import ExperimentConfig, markdown_table, run_experiment

        cfg = ExperimentConfig(seed=args.seed, n_test_questions=args.test_questions,
                               lam=args.lam, backend=args.backend,
                               budget_fraction=args.budget_fraction)
        res = run_experiment(cfg, args.model_cache, log=lambda m: print(m, file=sys.stderr))
        out["experiment"] = res
        print("== best-of-N accuracy (majority vote) ==")
        print("dense greedy:", {k: round(v, 3) for k, v in res["dense_greedy_accuracy"].items()})
        print("dense sample:", {k: round(v, 3) for k, v in res["dense_sample_accuracy"].items()})
        for b in ("easy", "medium", "hard", "all"):
            print(markdown_table(res, b))
            print()
        print("paired vs dense greedy, wins/losses (right where dense greedy is wrong / wrong "
              "where it is right):")
        for m in ("sprint_exact", "topn_alignment", "dense_sampling", "random_heads"):
            pv = res["paired_vs_dense_greedy"][m]
            print(f"  {m:<16} " + "  ".join(f"N={n}: {v['wins']}/{v['losses']}"
                                            for n, v in pv.items()))
        best = sorted(res["single_configuration_accuracy"].items(), key=lambda kv: -kv[1])[:3]
        print("best fixed configurations:", best)
        print("solves:", json.dumps(res["solves"]))
        print("selector:", json.dumps(res["selector"]))
        print(f"total {res['total_time_s']:.1f} s")
    if args.json:
        from optprune.experiments.jsonio import write_json_atomic

        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
