"""Allocation engine on example problems (optprune/alloc/examples.py: LLaMA, CNN
shapes with bilinear costs, unequal-cost knapsacks): build and solve time per backend,
model size, peak memory, and the price of greedy of each baseline, side by side.

    python benchmarks/bench_allocation.py [--shapes llama-7b,llama-13b,llama-70b]
        [--backends highs,scip,cpsat] [--time-limit 60] [--gap 1e-6] [--json OUT]
    python benchmarks/bench_allocation.py --shapes unequal-20k,unequal-1m --limits 1,5,60

With ``--limits`` the time-limit adherence table: per shape and requested limit, the
wall time of ``allocate`` (the problem built before the clock starts), status and gap.

Each (shape, backend) runs in a fresh process so that peak memory (ru_maxrss) is
that run's own. Ratios are taken against HiGHS in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time


def one(shape: str, backend: str, time_limit_s: float, baselines: bool,
        gqa: bool = False, restart: bool = False, rel_gap: float = 1e-6) -> dict:
    gc.freeze()
    from optprune.alloc import allocate, engine
    from optprune.alloc.examples import EXAMPLES, SHAPES, llama_problem

    if restart:  # HiGHS with its default restart, for the ablation
        engine.ALLOCATION_BACKEND_OPTIONS = {}
    t0 = time.perf_counter()
    p = llama_problem(shape, gqa_implications=gqa) if shape in SHAPES else EXAMPLES[shape]()
    build_problem = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = allocate(p, backend=backend, time_limit_s=time_limit_s, baselines=baselines,
                 rel_gap=rel_gap)
    wall = time.perf_counter() - t0
    d = r.to_dict()
    return {
        "shape": shape + (" +gqa" if gqa else "") + (" restart" if restart else ""),
        "backend": backend, "structures": p.n,
        "cols": d["model"].get("columns", 0), "rows": d["model"].get("rows", 0),
        "formulation": d["formulation"],
        "problem_s": build_problem, "build_s": d["build_time_s"], "solve_s": d["solve_time_s"],
        "total_s": d["total_time_s"], "nodes": d["nodes"], "termination": d["termination"],
        "objective": d["objective"], "bound": d["bound"], "gap": d["gap"],
        "wall_s": wall, "time_limit_s": time_limit_s, "message": d["message"],
        "rel_gap": rel_gap,
        "baseline_s": {k: b["time_s"] for k, b in d["baselines"].items()},
        "price_of_greedy": d["price_of_greedy"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _header(*cols: str) -> None:
    """A blank line and a markdown table's header."""
    print()
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))


def run_one(shape: str, backend: str, time_limit_s: float, flags: str,
            rel_gap: float = 1e-6) -> dict:
    """``one`` in a fresh process (its own peak memory, no state carried over)."""
    out = subprocess.run([sys.executable, __file__, "--one", shape, backend,
                          str(time_limit_s), flags, str(rel_gap)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def limits(shapes: list[str], limits_s: list[float], rel_gap: float,
           json_out: str | None) -> None:
    runs = []
    for shape in shapes:
        for tl in limits_s:
            r = run_one(shape, "highs", tl, "b", rel_gap)
            runs.append(r)
            print(f"{shape:<14} limit {tl:g}s wall {r['wall_s']:.2f}s {r['termination']} "
                  f"gap {r['gap']} ({r['message']})", flush=True)
    _header("shape", "structures", "limit s", "wall s", "wall / limit", "status", "objective",
            "bound", "gap", "how", "peak RSS MB")
    for r in runs:
        gap = "-" if r["gap"] is None else f"{r['gap']:.1e}"
        obj = "-" if r["objective"] is None else f"{r['objective']:.6g}"
        bound = "-" if r["bound"] is None else f"{r['bound']:.6g}"
        print(f"| {r['shape']} | {r['structures']:,} | {r['time_limit_s']:g} | "
              f"{r['wall_s']:.2f} | {r['wall_s'] / r['time_limit_s']:.2f} | "
              f"{r['termination']} | {obj} | {bound} | {gap} | {r['message'] or 'solver'} | "
              f"{r['peak_rss_mb']:.0f} |")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(runs, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama-7b,llama-13b,llama-70b")
    ap.add_argument("--backends", default="highs,scip,cpsat")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--gap", type=float, default=1e-6, help="relative gap (allocate's rel_gap)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--limits", default=None,
                    help="comma-separated time limits: the adherence table (HiGHS)")
    ap.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.limits:
        limits(a.shapes.split(","), [float(x) for x in a.limits.split(",")], a.gap, a.json)
        return
    if a.one:
        shape, backend, tl, flags, gap = a.one
        print(json.dumps(one(shape, backend, float(tl), "b" in flags, "g" in flags,
                             "r" in flags, float(gap))))
        return
    runs = []
    plan = []
    for shape in a.shapes.split(","):
        for backend in a.backends.split(","):
            plan.append((shape, backend, "b" if backend == "highs" else "-"))
        if shape == "llama-7b":
            plan.append((shape, "highs", "br"))
        if shape == "llama-70b":
            plan.append((shape, "highs", "g"))
    for shape, backend, flags in plan:
        runs.append(run_one(shape, backend, a.time_limit, flags, a.gap))
        r = runs[-1]
        print(f"{r['shape']:<18} {r['backend']:<6} {r['structures']:>8} str {r['cols']:>6} cols "
              f"{r['rows']:>5} rows  problem {r['problem_s']:.2f}s build {r['build_s']:.2f}s "
              f"solve {r['solve_s']:.2f}s nodes {r['nodes']} {r['termination']} "
              f"gap {r['gap'] if r['gap'] is None else format(r['gap'], '.1e')} "
              f"rss {r['peak_rss_mb']:.0f} MB", flush=True)
    _header("shape", "backend", "structures", "cols x rows", "build s", "solve s", "nodes",
            "status", "gap", "solve / HiGHS", "peak RSS MB")
    for r in runs:
        ref = next(x for x in runs if x["shape"] == r["shape"].split(" ")[0]
                   and x["backend"] == "highs")
        ratio = r["solve_s"] / max(ref["solve_s"], 1e-9)
        gap = "-" if r["gap"] is None else f"{r['gap']:.1e}"
        print(f"| {r['shape']} | {r['backend']} | {r['structures']:,} | {r['cols']:,} x "
              f"{r['rows']:,} | {r['build_s']:.2f} | {r['solve_s']:.2f} | {r['nodes']} | "
              f"{r['termination']} | {gap} | {ratio:.1f}x | {r['peak_rss_mb']:.0f} |")
    _header("shape", "baseline", "seconds", "price of greedy")
    for r in runs:
        for k, v in r["price_of_greedy"].items():
            pog = "infeasible" if v is None else f"{100 * v:.2f}%"
            print(f"| {r['shape']} | {k} | {r['baseline_s'][k]:.2f} | {pog} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)


if __name__ == "__main__":
    main()
