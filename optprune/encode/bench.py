"""``optprune bench``: instances x backends x seeds under a time limit.

Every finished run is appended to a JSON-lines file as one line, written by the parent
process alone, flushed and fsynced. A run killed mid-way restarts where it stopped: the
records already in the file are read back (a torn last line is skipped) and their
(instance, backend, seed) keys are not run again.

Summary per group (backend, optionally the instance's network variant or any sidecar
field): runs, solved (proved optimal or infeasible), the shifted geometric mean of the
solve time (a run that hit the limit counts as the limit),

    sgm(t; s) = exp(mean(log(t_i + s))) - s,        s = ``shift_s`` (default 1 s),

the shifted geometric mean of the node count (shift 10) and the mean gap of the runs
stopped by the limit. The profile plot shows, per group, the fraction of runs solved
within t seconds.

Parallel: local worker processes by default (``--workers N``); ``--scheduler ADDRESS``
sends the runs to a Dask distributed scheduler, ``--scheduler local`` starts a Dask
LocalCluster with ``--workers`` workers (the ``dist`` extra). Instance paths must be
readable from the workers.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import socket
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import ValidationError

__all__ = ["Task", "collect_instances", "run_task", "run_bench", "read_records", "summarize",
           "shifted_geomean", "format_summary", "plot_profile", "add_bench_arguments"]


@dataclass(frozen=True)
class Task:
    instance: str       # path to NAME.mps
    backend: str
    seed: int
    time_limit_s: float
    expect_sha256: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (Path(self.instance).stem, self.backend, int(self.seed))


def collect_instances(paths: Iterable[str]) -> list[tuple[str, str | None]]:
    """(mps path, expected sha256 or None) for files, directories and MANIFEST.json files.
    A directory with a MANIFEST lists its instances with their hashes."""
    from .instances import load_manifest

    out: list[tuple[str, str | None]] = []
    for p in map(Path, paths):
        man = p / "MANIFEST.json" if p.is_dir() else (p if p.name == "MANIFEST.json" else None)
        if man is not None and man.exists():
            info = load_manifest(man.parent, missing_ok=False)  # schema and names checked
            for name, e in sorted(info["instances"].items()):
                out.append((str(man.parent / f"{name}.mps"), e["mps_sha256"]))
        elif p.is_dir():
            out.extend((str(f), None) for f in sorted(p.glob("*.mps")))
        elif p.suffix.lower() in (".mps", ".lp") and p.exists():
            out.append((str(p), None))
        else:
            raise ValidationError(
                f"Bench input {str(p)!r} must be an existing .mps/.lp file, a directory of them, "
                "or an instance library with MANIFEST.json."
            )
    if not out:
        raise ValidationError("No instances found in the bench inputs.")
    return out


def run_task(task: Task) -> dict[str, Any]:
    """Solve one instance; a limit or a solver failure is a record, never an exception."""
    from ..solve import SolveOptions, solve
    from .instances import read_instance

    rec: dict[str, Any] = {
        "instance": Path(task.instance).stem, "path": task.instance, "backend": task.backend,
        "seed": task.seed, "time_limit_s": task.time_limit_s, "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    try:
        model = read_instance(task.instance, task.expect_sha256)
        meta = model.metadata or {}
        rec["meta"] = {k: meta.get(k) for k in ("set", "network_variant", "network_sizes",
                                                "norm", "radius", "objective", "bounds_method",
                                                "binaries") if k in meta}
        res = solve(model, task.backend, SolveOptions(time_limit_s=task.time_limit_s,
                                                      seed=task.seed, rel_gap=1e-6))
        d = res.to_dict()
        rec.update({k: d[k] for k in ("termination", "solution_status", "objective", "bound",
                                      "gap", "build_time_s", "solve_time_s", "nodes",
                                      "backend_version")})
        rec["solved"] = res.termination.value in ("optimal", "infeasible")
    except Exception as exc:  # noqa: BLE001 - a broken run is data, the bench goes on
        rec.update({"termination": "error", "error": f"{type(exc).__name__}: {exc}",
                    "solved": False, "solve_time_s": None})
    rec["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return rec


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (a torn or corrupt line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    recs = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and "instance" in r and "backend" in r:
            recs.append(r)
    return recs


def _append(path: Path, rec: dict[str, Any]) -> None:
    line = json.dumps(rec, default=_json_default) + "\n"
    needs_nl = path.exists() and path.stat().st_size > 0 and not _ends_with_newline(path)
    with open(path, "a") as f:
        f.write(("\n" if needs_nl else "") + line)
        f.flush()
        os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def run_bench(instances: list[tuple[str, str | None]], backends: list[str], seeds: list[int],
              time_limit_s: float, out: str | os.PathLike, workers: int = 1,
              scheduler: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run every (instance, backend, seed) not yet in ``out``; return all records."""
    from ..solve import get_backend

    if not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise ValidationError(
            f"The time limit must be a positive number of seconds; got {time_limit_s}.")
    if workers < 1:
        raise ValidationError(f"--workers must be at least 1; got {workers}.")
    for b in backends:
        get_backend(b)  # unknown or unavailable backends fail before any run
    from .cli import writable_file

    out = writable_file(out, "The record file")
    done = {(r["instance"], r["backend"], int(r["seed"])) for r in read_records(out)}
    tasks = [Task(p, b, s, time_limit_s, h) for p, h in instances for b in backends for s in seeds]
    todo = [t for t in tasks if t.key not in done]
    bar = _bar(len(tasks), len(tasks) - len(todo), progress)
    try:
        if not todo:
            pass
        elif scheduler:
            _run_dask(todo, out, workers, scheduler, bar)
        elif workers == 1:
            for t in todo:
                _append(out, run_task(t))
                bar.update(1)
        else:
            # spawn, not fork: a forked child of a process whose HiGHS thread pool is
            # running can deadlock (it did here).
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                     initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as ex:
                futs = [ex.submit(run_task, t) for t in todo]
                for f in as_completed(futs):
                    _append(out, f.result())
                    bar.update(1)
    finally:
        bar.close()
    return read_records(out)


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this process when the parent ends, even by ``kill -9``
    (which runs no clean-up in the parent). Linux: the kernel sends SIGKILL on the
    parent's death (PR_SET_PDEATHSIG); everywhere: a daemon thread polls the parent id
    (a solver call that releases the GIL does not stop it)."""
    import signal
    import threading

    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the thread below does it
        pass
    if os.getppid() != parent_pid:  # the parent died before the line above ran
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="optprune-parent-watch", daemon=True).start()


def _run_dask(todo: list[Task], out: Path, workers: int, scheduler: str, bar: Any) -> None:
    from .._extras import require

    distributed = require("distributed", "dist", "running the bench on a Dask cluster")
    cluster = None
    if scheduler == "local":
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        client = distributed.Client(cluster)
    else:
        client = distributed.Client(scheduler)
    try:
        futs = client.map(run_task, todo, pure=False)
        for f in distributed.as_completed(futs):
            _append(out, f.result())
            bar.update(1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, initial: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="run", dynamic_ncols=True)


# ----------------------------------------------------------------------- summary
def shifted_geomean(values: Iterable[float], shift: float = 1.0) -> float:
    """``exp(mean(log(v + shift))) - shift``; nan for no values."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return math.nan
    if np.any(v + shift <= 0):
        raise ValidationError(f"shifted_geomean needs values > -shift; got min {v.min()}.")
    return float(np.exp(np.mean(np.log(v + shift))) - shift)


def _group_key(r: dict[str, Any], fields: list[str]) -> tuple:
    out = []
    for f in fields:
        if f in r:
            out.append(r[f])
        else:
            out.append((r.get("meta") or {}).get(f))
    return tuple(str(x) for x in out)


def summarize(records: list[dict[str, Any]], group_by: list[str] | None = None,
              shift_s: float = 1.0) -> list[dict[str, Any]]:
    """One row per group (see the module docstring)."""
    group_by = group_by or ["backend"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(_group_key(r, group_by), []).append(r)
    rows = []
    for key, rs in sorted(groups.items()):
        times = [min(float(r["solve_time_s"]), float(r["time_limit_s"]))
                 if r.get("solved") else float(r["time_limit_s"]) for r in rs]
        nodes = [float(r["nodes"]) for r in rs if r.get("nodes") is not None]
        gaps = [float(r["gap"]) for r in rs if not r.get("solved") and r.get("gap") is not None]
        rows.append({
            **dict(zip(group_by, key)),
            "runs": len(rs), "solved": int(sum(bool(r.get("solved")) for r in rs)),
            "errors": int(sum(r.get("termination") == "error" for r in rs)),
            "sgm_time_s": shifted_geomean(times, shift_s),
            "sgm_nodes": shifted_geomean(nodes, 10.0) if nodes else math.nan,
            "mean_gap_at_limit": float(np.mean(gaps)) if gaps else None,
        })
    return rows


def format_summary(rows: list[dict[str, Any]], shift_s: float = 1.0) -> str:
    if not rows:
        return "(no records)"
    keys = [k for k in rows[0] if k not in ("runs", "solved", "errors", "sgm_time_s",
                                            "sgm_nodes", "mean_gap_at_limit")]
    head = keys + ["solved", f"sgm time (s, shift {shift_s:g})", "sgm nodes", "gap at limit"]
    lines = [head]
    for r in rows:
        gap = "-" if r["mean_gap_at_limit"] is None else f"{r['mean_gap_at_limit']:.3g}"
        nodes = "-" if math.isnan(r["sgm_nodes"]) else f"{r['sgm_nodes']:.0f}"
        lines.append([str(r[k]) for k in keys] + [f"{r['solved']}/{r['runs']}",
                                                  f"{r['sgm_time_s']:.3f}", nodes, gap])
    w = [max(len(row[i]) for row in lines) for i in range(len(head))]
    fmt = lambda row: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(row)) + " |"  # noqa: E731
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (x + 2) for x in w) + "|"]
                     + [fmt(r) for r in lines[1:]])


def plot_profile(records: list[dict[str, Any]], path: str | os.PathLike,
                 group_by: list[str] | None = None) -> Path:
    """Fraction of runs solved within t seconds, one curve per group (log time axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group_by = group_by or ["backend"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(_group_key(r, group_by), []).append(r)
    fig, ax = plt.subplots(figsize=(6, 4))
    tmax = max((float(r["time_limit_s"]) for r in records), default=1.0)
    solved_t = [float(r["solve_time_s"]) for r in records if r.get("solved")]
    tmin = max(1e-3, 0.5 * min(solved_t)) if solved_t else 1e-3
    for key, rs in sorted(groups.items()):
        t = np.sort([float(r["solve_time_s"]) for r in rs if r.get("solved")])
        frac = np.arange(1, t.size + 1) / len(rs)
        ax.step(np.r_[tmin, t, tmax], np.r_[0, frac, frac[-1] if frac.size else 0], where="post",
                label=" / ".join(key))
    ax.set_xscale("log")
    ax.set_xlabel("solve time (s)")
    ax.set_ylabel("fraction solved")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- CLI
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0] + " Records go to a JSON-lines file; rerun the " \
        "same command to resume after a kill."
    p.add_argument("inputs", nargs="+", help=".mps files, directories, or an instance library")
    p.add_argument("--backends", default="highs", help="comma list (default highs)")
    p.add_argument("--seeds", default="0", help="comma list of solver seeds (default 0)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="S")
    p.add_argument("--out", default="bench.jsonl", help="JSON-lines record file (appended)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler ADDRESS, or 'local' for a Dask LocalCluster")
    p.add_argument("--group-by", default="backend",
                   help="summary groups: record or sidecar fields, e.g. backend,network_variant")
    p.add_argument("--shift", type=float, default=1.0, help="shift of the geometric mean (s)")
    p.add_argument("--plot", metavar="PNG", help="write a solve-time profile plot")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summary-only", action="store_true", help="only summarize --out")
    p.set_defaults(func=run_bench_cli)


def run_bench_cli(args: argparse.Namespace) -> int:
    from .cli import writable_file

    group_by = [g.strip() for g in args.group_by.split(",") if g.strip()]
    if args.plot:
        writable_file(args.plot, "The --plot file")
    if args.summary_only:
        recs = read_records(args.out)
    else:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError as exc:
            raise ValidationError(
                f"--seeds must be a comma list of integers; got {args.seeds!r}.") from exc
        recs = run_bench(collect_instances(args.inputs),
                         [b.strip() for b in args.backends.split(",") if b.strip()], seeds,
                         args.time_limit, args.out, args.workers, args.scheduler,
                         progress=not args.no_progress)
    print(format_summary(summarize(recs, group_by, args.shift), args.shift))
    if args.plot:
        print(f"profile plot: {plot_profile(recs, args.plot, group_by)}")
    return 0
