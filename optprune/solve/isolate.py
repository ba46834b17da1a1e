"""Run a solve in a child process that is stopped at a wall-clock deadline.

A solver's own time limit is checked only where the solver checks it. HiGHS 1.16
does not check it inside the presolve of its root LP (``detectParallelRowsAndCols``
on a 2-row, 10^5-column knapsack: 9 s) nor inside the root's randomized rounding
(conflict analysis), and a 5 s limit then ended after 7.6-381 s. Nothing in the
process can stop that code (it calls no callback), so a limit that must hold is
enforced from outside: the solve runs in a fresh interpreter
(``python -m optprune.solve.isolate``), the model and options go in on its stdin as
a pickle, the result comes back on its stdout, and at the deadline the child is
killed. A killed solve is a result, not an error: termination ``time_limit``, no
solution, no bound; the caller completes it with what it already knows.

The price is the child's start (an interpreter importing numpy, scipy and highspy:
about 0.5-0.8 CPU-s here) and the pickle of the model, so callers use it only for
models large enough to overrun (see ``optprune.alloc.engine.ISOLATE_ENTRIES``).
A fresh process also gets a fresh HiGHS thread pool, so ``threads`` is honored
whatever ran before in the caller's process.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import SolverError
from .result import SolutionStatus, SolveResult, Termination

# Seconds given to the child after the deadline to return on its own (its result
# travels back through a pipe) before it is killed.
GRACE_S = 0.05


def run_isolated(fn: Callable[..., SolveResult], args: tuple[Any, ...], wall_s: float,
                 backend: str = "", backend_version: str = "") -> SolveResult:
    """``fn(*args)`` in a child process, killed after ``wall_s`` seconds.

    ``fn`` must be a module-level function (it is pickled by reference) returning a
    SolveResult. An exception in the child is raised here (as itself when it can be
    unpickled, else as SolverError with the child's message)."""
    t0 = time.perf_counter()
    payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
    # Started in the folder that holds this optprune package, so that ``-m`` finds
    # this package and not whatever the caller's working directory holds.
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-m", "optprune.solve.isolate"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        out, _ = child.communicate(payload, timeout=max(wall_s, 0.0) + GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        waited = time.perf_counter() - t0
        return SolveResult(
            termination=Termination.TIME_LIMIT, solution_status=SolutionStatus.NONE,
            objective=None, bound=None, gap=float("inf"), build_time_s=0.0,
            solve_time_s=waited, nodes=None, backend=backend, backend_version=backend_version,
            message=f"stopped at the time limit: the solver had not returned after "
                    f"{waited:.2f} s and its process was killed",
            details={"isolated": True, "killed": True})
    except BaseException:
        child.kill()
        child.communicate()
        raise
    if child.returncode != 0 or not out:
        raise SolverError(f"The solver's child process ended with exit code "
                          f"{child.returncode} and no result (see its output above).")
    kind, value = pickle.loads(out)
    if kind == "error":
        raise value
    if kind == "error_text":
        raise SolverError(f"The solver's child process failed: {value}")
    res: SolveResult = value
    return _mark(res, time.perf_counter() - t0)


def _mark(res: SolveResult, wall: float) -> SolveResult:
    import dataclasses

    return dataclasses.replace(res, details={**res.details, "isolated": True,
                                             "isolated_wall_s": round(wall, 4)})


def _child() -> int:
    # The result goes to the real stdout; anything the solver prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        fn, args = pickle.load(sys.stdin.buffer)
        reply: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as exc:  # every failure travels back to the caller
        try:
            pickle.dumps(exc)
            reply = ("error", exc)
        except Exception:
            reply = ("error_text", f"{type(exc).__name__}: {exc}")
    sys.stdout.flush()
    out.write(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
