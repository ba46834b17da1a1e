"""``optprune allocate`` and ``optprune backends``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from ..errors import ValidationError
from .examples import EXAMPLES


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "allocate",
        help="solve an allocation problem (JSON) exactly and compare with the baselines",
        description="Solve an allocation problem exactly. PROBLEM.json follows "
        "optprune/alloc/problem.schema.json (see formulations/allocation.md).",
    )
    p.add_argument("problem", nargs="?", help="problem file (JSON)")
    p.add_argument("--example", choices=list(EXAMPLES),
                   help="build an example problem (optprune/alloc/examples.py) instead of "
                        "reading a file")
    p.add_argument("--seed", type=int, default=0, help="seed of the example's scores")
    p.add_argument("--gqa-implications", action="store_true",
                   help="llama-70b: prune key/value groups too, with implications")
    p.add_argument("--write-problem", metavar="FILE", help="save the problem as JSON")
    p.add_argument("--backend", default="highs", help="highs | cpsat | scip | pyomo")
    p.add_argument("--time-limit", type=float, default=None, metavar="S")
    p.add_argument("--gap", type=float, default=1e-6, help="relative gap (default 1e-6)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--formulation", default="auto", choices=["auto", "width", "structure"])
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--pareto", metavar="RESOURCE:F1,F2,...",
                   help="also sweep a Pareto front over relative budgets of RESOURCE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="FILE", help="write the full result with kept ids (JSON)")
    p.set_defaults(func=run_allocate)

    b = sub.add_parser("backends", help="list the solver backends and whether they work here")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=run_backends)


def _load_problem(args: argparse.Namespace):
    from .examples import SHAPES, llama_problem
    from .problem import AllocationProblem

    if args.example and args.problem:
        raise ValidationError("Give either PROBLEM.json or --example, not both.")
    if args.example in SHAPES:
        return llama_problem(args.example, seed=args.seed, gqa_implications=args.gqa_implications)
    if args.example:
        if args.gqa_implications:
            raise ValidationError(f"--gqa-implications applies to the LLaMA examples "
                                  f"({', '.join(SHAPES)}), not to {args.example!r}.")
        return EXAMPLES[args.example](seed=args.seed)
    if not args.problem:
        raise ValidationError("Give a PROBLEM.json file or --example NAME.")
    return AllocationProblem.read_json(args.problem)


def _parse_pareto(spec: str) -> tuple[str, list[float]]:
    try:
        res, vals = spec.split(":", 1)
        fr = [float(v) for v in vals.split(",") if v]
    except ValueError as exc:
        raise ValidationError(
            f"--pareto must look like RESOURCE:0.3,0.5,0.7; got {spec!r}."
        ) from exc
    if not fr:
        raise ValidationError(f"--pareto needs at least one fraction; got {spec!r}.")
    return res, fr


def check_writable(path: str, option: str) -> None:
    """ValidationError unless ``path`` can be written as a file (checked before any
    work, so that a long solve is never lost to a bad output path)."""
    import tempfile
    from pathlib import Path

    p = Path(path)
    if p.is_dir() or path.endswith(("/", "\\")):
        raise ValidationError(f"{option} {path!r} is a directory; give a file name.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValidationError(f"{option} {path!r}: the directory {str(parent)!r} does not "
                              "exist; create it first.")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".optprune-check-"):
            pass
    except OSError as exc:
        raise ValidationError(f"{option} {path!r} cannot be written in {str(parent)!r}: "
                              f"{exc.strerror or exc}.") from exc
    if p.exists() and not os.access(p, os.W_OK):
        raise ValidationError(f"{option} {path!r} exists and is not writable.")


def run_allocate(args: argparse.Namespace) -> int:
    from ..solve import get_backend
    from ..solve.model import write_json_atomic
    from .engine import allocate, pareto_front

    get_backend(args.backend)  # unknown or unavailable: fail before any work
    for path, option in ((args.out, "--out"), (args.write_problem, "--write-problem")):
        if path:
            check_writable(path, option)
    pareto = _parse_pareto(args.pareto) if args.pareto else None
    problem = _load_problem(args)
    if pareto:
        problem._check_resource(pareto[0], "--pareto")
    res = allocate(problem, backend=args.backend, time_limit_s=args.time_limit, rel_gap=args.gap,
                   threads=args.threads, formulation=args.formulation,
                   baselines=not args.no_baselines)
    out: dict[str, Any] = res.to_dict()
    if pareto:
        pts = pareto_front(problem, pareto[0], pareto[1], backend=args.backend,
                           time_limit_s=args.time_limit, rel_gap=args.gap)
        out["pareto"] = {"resource": pareto[0], "points": [pt.to_dict() for pt in pts]}
    if args.write_problem:
        problem.write_json(args.write_problem)
    if args.out:
        full = dict(out)
        full["kept_ids"] = res.kept_ids
        write_json_atomic(args.out, full)
    if args.json:
        json.dump(out, sys.stdout, default=_default)
        sys.stdout.write("\n")
    else:
        print(format_result(out))
    return 0


def _default(o: Any) -> Any:
    from ..experiments.jsonio import json_default as _json_default

    return _json_default(o)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.6g}"
    return str(v)


def format_result(d: dict[str, Any]) -> str:
    lines = [
        f"problem {d['problem']}: {d['termination']} ({d['solution_status']}), "
        f"formulation {d['formulation']} {d['model']}",
        f"  objective {_fmt(d['objective'])}  bound {_fmt(d['bound'])}  gap {_fmt(d['gap'])}"
        + ("" if d["objective"] is not None else
           f"  (no feasible selection found: {d.get('message') or d['termination']})"),
        f"  build {d['build_time_s']:.3f} s  solve {d['solve_time_s']:.3f} s  "
        f"total {d['total_time_s']:.3f} s  nodes {_fmt(d['nodes'])}  [{d['backend_version']}]",
    ]
    if d["usage"]:
        use = ", ".join(f"{r} {_fmt(v)} / {_fmt(d['dense_usage'][r])} "
                        f"({100 * v / d['dense_usage'][r]:.1f}%)" for r, v in d["usage"].items()
                        if d["dense_usage"].get(r))
        lines.append(f"  kept {d['kept']} structures; usage {use}")
    if d["baselines"]:
        lines.append("  baseline           retained     vs exact   feasible  broken constraints")
        for name, b in d["baselines"].items():
            rel = "-"
            if d["objective"]:
                rel = f"{100 * (b['objective'] - d['objective']) / abs(d['objective']):+.3f}%"
            first = b["violations"][0] if b["violations"] else ""
            more = f" (+{b['n_violations'] - 1} more)" if b["n_violations"] > 1 else ""
            lines.append(f"  {name:<16} {b['objective']:>12.6g} {rel:>11}   "
                         f"{'yes' if b['feasible'] else 'NO':<8}  {first}{more}")
    if "pareto" in d:
        lines.append(f"  Pareto front over {d['pareto']['resource']}:")
        for pt in d["pareto"]["points"]:
            lines.append(f"    budget {_fmt(pt['budget'])}: objective {_fmt(pt['objective'])} "
                         f"bound {_fmt(pt['bound'])} gap {_fmt(pt['gap'])} ({pt['termination']})")
    return "\n".join(lines)


def run_backends(args: argparse.Namespace) -> int:
    from ..solve import available_backends, get_backend

    info = {}
    for name, (ok, why) in available_backends().items():
        info[name] = {"available": ok, "reason": why,
                      "version": type(get_backend(name)).version() if ok else None}
    if args.json:
        print(json.dumps(info))
    else:
        for name, v in info.items():
            print(f"{name:<8} {'yes' if v['available'] else 'no ':<4} {v['version'] or v['reason']}")
    return 0
