"""Curating the instance library: hardness classes, known optima confirmed by a second
solver, MIPLIB's solution conventions (``instances/README.md``).

For each instance (``curate``), on its .mps file:

1. HiGHS with its defaults (one thread, relative gap 1e-6) under ``class_limit_s``
   (300 s): proved within 10 s -> class ``easy``; within the limit -> ``medium``.
2. Not proved: optprune's own strategy on the same model (PGD start, root ideal cuts,
   HiGHS's presolve and heuristics off; adversarial instances, re-encoded from the
   network and the sidecar and checked to be the same model) under
   ``strategy_limit_s``. Proved -> ``hard`` (HiGHS's defaults need more than 5 minutes,
   the optimum is known); not proved -> ``open``, with the best point and the best bound
   any run found.
3. Every proved optimum is confirmed by SCIP (OR-Tools) on the .mps file, handed the
   best known point as a hint (that speeds up the proof, it does not make it), under
   ``confirm_limit_s``; what SCIP reports is recorded beside the optimum
   (``known.confirmed_by``: termination, objective, bound, time, ``agrees``).

The best known point is kept as its input x (``known.best_input``, exact floats); its
MIPLIB solution file NAME.sol is the lift of x to every column (``heuristics.lift``),
rebuilt byte for byte by ``generate --from-networks``. ``write_solu`` writes the
library's ``.solu`` file (``=opt= NAME VALUE`` for proved optima, ``=best= NAME VALUE``
for the best known value of an open instance, ``=inf= NAME`` for a proved infeasible one).
The MANIFEST is rewritten after every instance, so a stopped run resumes.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ValidationError
from ..solve import SolveOptions, solve
from ..solve.model import write_json_atomic
from .instances import (
    MANIFEST, InstanceSet, _built_instances, _set_data, load_manifest, read_instance,
    sha256_file, write_model, write_solution,
)

__all__ = ["curate", "write_solu", "hardness_table", "EASY_S", "CLASS_LIMIT_S"]

EASY_S = 10.0
CLASS_LIMIT_S = 300.0


def _f(v: Any) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _spec(manifest: dict, set_name: str) -> InstanceSet:
    d = dict(manifest["sets"][set_name])
    fields = InstanceSet.__dataclass_fields__
    kw = {k: v for k, v in d.items() if k in fields}
    for k in ("archs", "attacks"):
        if k in kw:
            kw[k] = tuple(tuple(a) for a in kw[k])
    for k in ("seeds", "images", "keep_fractions", "patients", "budgets"):
        if k in kw:
            kw[k] = tuple(kw[k])
    return InstanceSet(**kw)  # the recipe the MANIFEST recorded


def rebuild(directory: Path, manifest: dict, name: str) -> tuple:
    """(model, lift, source) of ``name`` rebuilt from its network and its set's recipe,
    checked to be the model of the .mps file (written again, the same sha256)."""
    from .network import load_network

    e = manifest["instances"][name]
    spec = _spec(manifest, e["set"])
    nets = manifest["sets"][e["set"]]["networks"]
    net_id = next(k for k, v in nets.items() if v["file"] == e["network"])
    net = load_network(directory / e["network"])
    data = _set_data(spec, int(e["seed"]))
    for nm, model, stats, lift_x, meta, source in _built_instances(spec, net_id, net, data):
        if nm == name:
            with tempfile.TemporaryDirectory() as tmp:  # the same bytes as the .mps file?
                mps, _ = write_model(model, tmp, name, stats, {
                    "set": e["set"], "seed": e["seed"], **meta,
                    "network_file": e["network"],
                    "network_variant": net_id.rsplit("-", 2)[-2]})
                same = sha256_file(mps) == e["mps_sha256"]
            if not same:
                raise ValidationError(f"Instance {name!r} rebuilt from its network is not the "
                                      "model of its .mps file; regenerate the set.")
            return model, lift_x, source
    raise ValidationError(f"Instance {name!r} is not produced by its set's recipe.")


def _better(sense: str, a: float | None, b: float | None) -> bool:
    if b is None:
        return a is not None
    if a is None:
        return False
    return a > b if sense == "max" else a < b


def _input_of(model: Any, x: np.ndarray) -> np.ndarray:
    meta = model.metadata
    if "x_columns" in meta and len(meta["x_columns"]) == 2 and meta.get("kind", "").startswith(
            "optprune.adversarial"):
        a, b = meta["x_columns"]
        return np.asarray(x[a:b], dtype=np.float64)
    return np.asarray(x[meta["x_columns"]], dtype=np.float64)


def curate_one(directory: Path, manifest: dict, name: str, class_limit_s: float,
               strategy_limit_s: float, confirm_limit_s: float,
               say: Callable[[str], None]) -> dict[str, Any]:
    """Classify, prove and confirm one instance (module docstring); the new entry."""
    from .attack import Strategy, solve_encoding
    from .formulate import Encoding

    e = dict(manifest["instances"][name])
    model = read_instance(directory / f"{name}.mps", e["mps_sha256"])
    sense = model.sense
    res = solve(model, "highs", SolveOptions(time_limit_s=class_limit_s, rel_gap=1e-6))
    runs = [{"solver": "highs", "settings": "defaults", "termination": res.termination.value,
             "objective": _f(res.objective), "bound": _f(res.bound),
             "time_s": round(res.solve_time_s, 3), "time_limit_s": class_limit_s,
             "load_avg_1min": round(os.getloadavg()[0], 2)}]
    best_x = res.x if res.x is not None else None
    best_obj, bound = _f(res.objective), _f(res.bound)
    proved = res.termination.value in ("optimal", "infeasible")
    by = "highs"
    lift_x = None
    if proved:
        cls = "easy" if res.solve_time_s < EASY_S else "medium"
    else:
        _, lift_x, source = rebuild(directory, manifest, name)
        if isinstance(source, Encoding):
            r = solve_encoding(source, "highs", SolveOptions(
                time_limit_s=strategy_limit_s, rel_gap=1e-6), strategy=Strategy())
            runs.append({"solver": "highs", "settings": "optprune strategy",
                         "termination": r.termination, "objective": _f(r.objective),
                         "bound": _f(r.bound), "time_s": round(
                             r.solve_time_s + r.stats.get("prepare_time_s", 0.0), 3),
                         "time_limit_s": strategy_limit_s})
            if _better(sense, _f(r.objective), best_obj) and r.witness is not None:
                best_obj, best_x = _f(r.objective), lift_x(r.witness)  # a full MIP point
            if r.bound is not None and (bound is None or _better(sense, bound, r.bound)):
                bound = _f(r.bound)
            if r.termination == "optimal":
                proved, by = True, "optprune strategy"
        cls = "hard" if proved else "open"
    known: dict[str, Any] = {
        "termination": "optimal" if proved and res.termination.value != "infeasible"
        else res.termination.value if proved else "time_limit",
        "objective": best_obj, "bound": best_obj if proved else bound,
        "proved_by": by if proved else None, "solver": "highs",
        "solver_version": res.backend_version,
        "time_s": runs[-1]["time_s"] if proved else None,
        "time_limit_s": runs[-1]["time_limit_s"], "runs": runs,
    }
    if best_x is not None:
        x_in = _input_of(model, best_x)
        known["best_input"] = [float(v) for v in x_in]
        if lift_x is None:
            _, lift_x, _ = rebuild(directory, manifest, name)
        point = lift_x(x_in)
        known["best_input_objective"] = model.objective_value(point)
        known["best_input_violation"] = model.max_violation(point)
        sol = write_solution(directory / f"{name}.sol", model, point)
        e["sol_sha256"] = sha256_file(sol)
        if proved and confirm_limit_s > 0:
            known["confirmed_by"] = _confirm(model, point, best_obj, confirm_limit_s)
    e["known"] = known
    e["class"] = cls
    e = dict(sorted(e.items()))  # the key order generate() writes
    conf = known.get("confirmed_by") or {}
    say(f"{name}: {cls}, {known['termination']} {best_obj} (bound {known['bound']}) by {by}; "
        f"SCIP {conf.get('termination', '-')} agrees={conf.get('agrees', '-')}")
    return e


def _confirm(model: Any, point: np.ndarray, objective: float | None,
             limit_s: float) -> dict[str, Any]:
    r = solve(model, "scip", SolveOptions(time_limit_s=limit_s, rel_gap=1e-6, threads=1,
                                          warm_start=point))
    agrees = (r.termination.value == "optimal" and objective is not None
              and r.objective is not None
              and abs(r.objective - objective) <= 1e-6 * max(1.0, abs(objective)))
    return {"solver": "scip", "solver_version": r.backend_version,
            "termination": r.termination.value, "objective": _f(r.objective),
            "bound": _f(r.bound), "time_s": round(r.solve_time_s, 3), "time_limit_s": limit_s,
            "agrees": bool(agrees)}


def curate(directory: str | Path = "instances", *, names: list[str] | None = None,
           sets: list[str] | None = None, class_limit_s: float = CLASS_LIMIT_S,
           strategy_limit_s: float = 600.0, confirm_limit_s: float = 600.0,
           force: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """Curate the library's instances (module docstring); returns the MANIFEST."""
    from ..solve.backends.highs import new_highs
    from .attack import run_highs

    directory = Path(directory)
    manifest = load_manifest(directory, missing_ok=False)
    say = progress or (lambda s: None)
    run_highs(new_highs(), 1)  # HiGHS's process-wide scheduler: one thread for every run
    todo = [n for n, e in sorted(manifest["instances"].items())
            if (not names or n in names) and (not sets or e.get("set") in sets)
            and (force or "class" not in e)]
    t0 = time.perf_counter()
    for k, name in enumerate(todo):
        manifest["instances"][name] = curate_one(directory, manifest, name, class_limit_s,
                                                 strategy_limit_s, confirm_limit_s, say)
        write_json_atomic(directory / MANIFEST, manifest)
        say(f"  [{k + 1}/{len(todo)}, {time.perf_counter() - t0:.0f} s]")
    write_solu(directory, manifest)
    return manifest


def write_solu(directory: str | Path, manifest: dict | None = None) -> Path:
    """``library.solu``: MIPLIB's =opt= / =best= / =inf= lines for the known entries."""
    directory = Path(directory)
    manifest = manifest or load_manifest(directory, missing_ok=False)
    lines = []
    for name, e in sorted(manifest["instances"].items()):
        k = e.get("known")
        if not k:
            continue
        if k.get("termination") == "infeasible":
            lines.append(f"=inf= {name}")
        elif k.get("termination") == "optimal" and k.get("objective") is not None:
            lines.append(f"=opt= {name} {k['objective']!r}")
        elif k.get("objective") is not None:
            lines.append(f"=best= {name} {k['objective']!r}")
    path = directory / "library.solu"
    path.write_text("\n".join(lines) + "\n")
    return path


def hardness_table(manifest: dict) -> str:
    """A Markdown table of the library: per set and network, sizes and classes."""
    groups: dict[tuple, list] = {}
    for _, e in sorted(manifest["instances"].items()):
        groups.setdefault((e.get("set"), e.get("network")), []).append(e)
    rows = ["| set | network | instances | columns | rows | binaries | easy | medium | hard "
            "| open | SCIP confirms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (set_name, net), es in groups.items():
        cls = [e.get("class") for e in es]

        def rng(key: str, es: list = es) -> str:
            v = [e[key] for e in es if key in e]
            return "-" if not v else (f"{min(v)}" if min(v) == max(v) else f"{min(v)}-{max(v)}")
        opt = [e for e in es if e.get("known", {}).get("termination") == "optimal"]
        conf = sum(bool(e["known"].get("confirmed_by", {}).get("agrees")) for e in opt)
        rows.append(f"| {set_name} | {Path(net or '-').stem} | {len(es)} | {rng('columns')} | "
                    f"{rng('rows')} | {rng('binaries')} | {cls.count('easy')} | "
                    f"{cls.count('medium')} | {cls.count('hard')} | {cls.count('open')} | "
                    f"{conf}/{len(opt)} |")
    tot = [e.get("class") for e in manifest["instances"].values()]
    rows.append(f"| all | | {len(tot)} | | | | {tot.count('easy')} | {tot.count('medium')} | "
                f"{tot.count('hard')} | {tot.count('open')} | |")
    return "\n".join(rows)

