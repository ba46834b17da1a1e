"""``optprune encode``, ``optprune instances generate|verify``, ``optprune bench``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ValidationError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "encode",
        help="encode a ReLU network + input as an adversarial MIP (NAME.mps + NAME.json)",
        description="Turn a trained (possibly pruned) ReLU network and an input x0 into an "
        "adversarial-example MIP, write it as NAME.mps + NAME.json, optionally solve it and "
        "verify the witness on the network in float64. See formulations/adversarial.md.",
    )
    e.add_argument("network", help="network file: .npz (optprune) or .onnx; .pt/.pth/.pkl "
                   "only with --allow-pickle")
    e.add_argument("--allow-pickle", action="store_true",
                   help="allow loading a pickled network (runs code from the file!)")
    e.add_argument("--input-shape", help="input shape for conv nets, e.g. 1,8,8")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--x0", help="the input: .npy file, or a JSON list, or a JSON file")
    src.add_argument("--digits-index", type=int, help="use test image I of the seeded digits split")
    e.add_argument("--label", type=int, help="true label (default: the network's prediction)")
    e.add_argument("--target", type=int, default=None, help="target class (default: any other)")
    e.add_argument("--norm", default="linf", choices=["linf", "l1"])
    e.add_argument("--radius", type=float, required=True, help="ball radius (epsilon)")
    e.add_argument("--domain", default="0,1", help="input domain LO,HI (default 0,1)")
    e.add_argument("--objective", default="margin",
                   choices=["margin", "min_distortion", "decision"])
    e.add_argument("--bounds", default="lp",
                   choices=["naive", "interval", "symbolic", "lp", "progressive"])
    e.add_argument("--mip-bound-time-limit", type=float, default=1.0, metavar="S",
                   help="per-bound time limit of the progressive MIP stage")
    e.add_argument("--relu", default="bigm", choices=["bigm", "ideal", "auto"],
                   help="ReLU formulation of unstable neurons: big-M (default), the ideal "
                   "formulation for all (error above --max-fan-in) or for small fan-in only")
    e.add_argument("--max-fan-in", type=int, default=None, metavar="N",
                   help="fan-in threshold of --relu ideal/auto (default 4; 2^N - 2 rows each)")
    e.add_argument("--name", default=None, help="instance name (default: from the inputs)")
    e.add_argument("--out", default=".", help="output directory (default: .)")
    e.add_argument("--solve", action="store_true", help="also solve and verify the witness")
    e.add_argument("--backend", default="highs")
    e.add_argument("--time-limit", type=float, default=60.0, metavar="S")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=run_encode)

    ins = sub.add_parser("instances", help="generate or verify the adversarial instance library")
    isub = ins.add_subparsers(dest="instances_command", required=True, metavar="ACTION")
    g = isub.add_parser("generate", help="regenerate a named set deterministically")
    g.add_argument("name", nargs="?", help="set name (see `optprune instances list`)")
    g.add_argument("--all", action="store_true",
                   help="every set of the shipped library (with --from-networks: rebuild the "
                        "files that are not shipped)")
    g.add_argument("--dir", default="instances")
    g.add_argument("--no-solve", action="store_true", help="skip solving for known optima")
    g.add_argument("--time-limit", type=float, default=None, metavar="S")
    g.add_argument("--from-networks", action="store_true",
                   help="rebuild from the networks the MANIFEST lists (hash-checked) instead "
                        "of retraining: exact on any machine")
    g.set_defaults(func=run_generate)
    v = isub.add_parser("verify", help="check every hash in MANIFEST.json and re-solve")
    v.add_argument("--dir", default="instances")
    v.add_argument("--no-solve", action="store_true", help="only check hashes")
    v.add_argument("--time-limit", type=float, default=None, metavar="S")
    v.add_argument("names", nargs="*", help="only these instances")
    v.set_defaults(func=run_verify)
    ls = isub.add_parser("list", help="list the named sets")
    ls.set_defaults(func=run_list)
    c = isub.add_parser("solve", help="classify (easy/medium/hard/open), prove, confirm with "
                        "SCIP and write .sol / library.solu (resumable)")
    c.add_argument("--dir", default="instances")
    c.add_argument("--sets", default=None, help="comma list of sets (default: all)")
    c.add_argument("--class-limit", type=float, default=300.0, metavar="S",
                   help="HiGHS (defaults) limit that separates medium from hard (300)")
    c.add_argument("--strategy-limit", type=float, default=600.0, metavar="S",
                   help="limit of optprune's strategy on what HiGHS did not prove (600)")
    c.add_argument("--confirm-limit", type=float, default=600.0, metavar="S",
                   help="SCIP's limit for confirming a proved optimum (600; 0: skip)")
    c.add_argument("--force", action="store_true", help="also instances already classified")
    c.add_argument("names", nargs="*", help="only these instances")
    c.set_defaults(func=run_solve)
    t = isub.add_parser("table", help="print the sizes / hardness table (Markdown)")
    t.add_argument("--dir", default="instances")
    t.set_defaults(func=run_table)

    b = sub.add_parser("bench", help="run instances x backends x seeds under time limits")
    from .bench import add_bench_arguments

    add_bench_arguments(b)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``--input-shape C,H,W`` as a tuple of positive ints."""
    if not text:
        return None
    try:
        shape = tuple(int(t) for t in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ValidationError(f"--input-shape must be a comma list of positive integers such as "
                              f"1,8,8; got {text!r}.")
    return shape


def parse_domain(text: str) -> tuple[float, float]:
    """``--domain LO,HI`` as two finite floats with LO <= HI."""
    try:
        lo, hi = (float(t) for t in text.split(","))
    except ValueError:
        lo = hi = float("nan")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise ValidationError(f"--domain must be LO,HI with finite LO <= HI, e.g. 0,1; got "
                              f"{text!r}.")
    return lo, hi


def writable_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` if needed and check that a file can be written in it, before any
    work whose result would be lost."""
    import tempfile

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".optprune-probe-"):
            pass
    except OSError as exc:
        raise ValidationError(f"{what} {str(p)!r} is not a writable directory "
                              f"({exc.strerror or exc}); choose another one.") from exc
    return p


def writable_file(path: str | os.PathLike, what: str) -> Path:
    """Check (creating nothing but the parent directory) that ``path`` can be written."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise ValidationError(f"{what} {str(p)!r} exists and is not a file; choose a file path.")
    writable_dir(p.parent if str(p.parent) else ".", f"The directory of {what.lower()}")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValidationError(f"{what} {str(p)!r} is not writable; choose another path.")
    return p


def _default_name(args: argparse.Namespace) -> str:
    stem = re.sub(r"[^A-Za-z0-9._+-]", "-", Path(args.network).stem).lstrip(".-") or "network"
    return f"{stem}-{args.norm}-r{args.radius:g}-{args.objective}"[:200]


def _parse_x0(args: argparse.Namespace) -> tuple[np.ndarray, int | None]:
    if args.digits_index is not None:
        from .prune import digits_data

        _, _, Xte, yte = digits_data(0)
        if not 0 <= args.digits_index < len(Xte):
            raise ValidationError(
                f"--digits-index must be in [0, {len(Xte) - 1}]; got {args.digits_index}.")
        return Xte[args.digits_index], int(yte[args.digits_index])
    s = args.x0
    p = Path(s)
    try:
        if p.suffix == ".npy" and p.is_file():
            return np.load(p, allow_pickle=False).astype(np.float64).ravel(), None
        if p.is_file():
            s = p.read_text(encoding="utf-8")
        return np.asarray(json.loads(s), dtype=np.float64).ravel(), None
    except (OSError, EOFError, RecursionError, ValueError, TypeError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and corrupt .npy files
        raise ValidationError(
            f"--x0 must be a .npy file, a JSON file or a JSON list of numbers; got {args.x0!r} "
            f"({type(exc).__name__})."
        ) from exc


def run_encode(args: argparse.Namespace) -> int:
    from . import load_network
    from .attack import solve_encoding
    from .bounds import compute_bounds
    from .formulate import AttackSpec, Region, encode
    from .instances import write_instance
    from .manifest import check_name
    from ..solve import SolveOptions

    shape = parse_shape(args.input_shape)
    name = check_name(args.name, "--name") if args.name is not None else _default_name(args)
    opts = SolveOptions(time_limit_s=args.time_limit) if args.solve else None
    if opts is not None:
        from ..solve import get_backend

        get_backend(args.backend)  # an unknown or missing backend fails before any work
    writable_dir(args.out, "--out")
    net = load_network(args.network, allow_pickle=args.allow_pickle, input_shape=shape)
    x0, label0 = _parse_x0(args)
    region = Region.make(net, x0, args.norm, args.radius, parse_domain(args.domain))
    label = args.label if args.label is not None else (
        label0 if label0 is not None else int(net.predict(x0)))
    spec = AttackSpec(label, args.target, args.objective)
    spec.validate(net.output_dim)
    b = compute_bounds(net, region, args.bounds, mip_time_limit_s=args.mip_bound_time_limit)
    enc = encode(net, region, spec, b, name=name, relu=args.relu, max_fan_in=args.max_fan_in)
    mps, js = write_instance(enc, args.out, name)
    out: dict[str, Any] = {"mps": str(mps), "json": str(js),
                           "bounds": b.to_dict(net), "stats": enc.stats()}
    if opts is not None:
        res = solve_encoding(enc, args.backend, opts)
        out["result"] = res.to_dict(with_witness=True)
    if args.json:
        print(json.dumps(out, default=_default))
    else:
        st = out["stats"]
        print(f"wrote {mps} and {js}")
        print(f"  {st['columns']} columns, {st['rows']} rows, {st['binaries']} binaries; "
              f"{st['stable']} stable / {st['unstable']} unstable neurons; "
              f"bounds ({b.method}) {b.time_s:.3f} s, build {st['build_time_s']:.3f} s")
        if st["relu_formulation"] != "bigm":
            print(f"  relu {st['relu_formulation']} (max fan-in {st['max_fan_in']}): "
                  f"{st['ideal_rows']} ideal rows for {st['ideal_neurons']} neurons")
        for r in b.report(net):
            print(f"  layer {r['layer']}: {r['neurons']} neurons, {r['stable_inactive']} "
                  f"inactive, {r['stable_active']} active, {r['unstable']} unstable")
        if args.solve:
            r = out["result"]
            print(f"  {r['outcome']}: {r['termination']}, objective {r['objective']}, bound "
                  f"{r['bound']}, verified {r['verified']}, solve {r['solve_time_s']:.2f} s"
                  + (f" ({r['message']})" if r.get("message") else ""))
    return 0


def _default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    raise TypeError(type(o).__name__)


def run_generate(args: argparse.Namespace) -> int:
    import time

    from .instances import LIBRARY_SETS, generate
    from .library import write_solu

    if (args.name is None) == (not args.all):
        raise ValidationError("instances generate takes a set name or --all (not both).")
    writable_dir(args.dir, "--dir")
    for name in LIBRARY_SETS if args.all else [args.name]:
        t0 = time.perf_counter()
        man = generate(name, args.dir, solve_known=not args.no_solve,
                       time_limit_s=args.time_limit, from_networks=args.from_networks,
                       progress=lambda s: print(s, flush=True))
        print(f"{len(man['sets'][name]['instances'])} instances of {name!r} in {args.dir} "
              f"({time.perf_counter() - t0:.0f} s); MANIFEST.json updated", flush=True)
    write_solu(args.dir)
    return 0


def run_solve(args: argparse.Namespace) -> int:
    from .library import curate

    writable_dir(args.dir, "--dir")
    curate(args.dir, names=args.names or None,
           sets=[s for s in args.sets.split(",") if s] if args.sets else None,
           class_limit_s=args.class_limit, strategy_limit_s=args.strategy_limit,
           confirm_limit_s=args.confirm_limit, force=args.force,
           progress=lambda s: print(s, flush=True))
    return 0


def run_table(args: argparse.Namespace) -> int:
    from .instances import load_manifest
    from .library import hardness_table

    print(hardness_table(load_manifest(args.dir, missing_ok=False)))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from .instances import verify

    rep = verify(args.dir, resolve=not args.no_solve, time_limit_s=args.time_limit,
                 names=args.names or None, progress=lambda s: print(s, flush=True))
    if rep.unbuilt:
        print(f"{len(rep.unbuilt)} of {rep.checked} instances are not built here (their sets "
              "ship networks only; their networks were checked): `optprune instances generate "
              "--all --from-networks --no-solve` builds them")
    if rep.ok:
        print(f"all {rep.checked - len(rep.unbuilt)} built instances verified")
        return 0
    print(f"{len(rep.failures)} failure(s) in {rep.checked} instances:", file=sys.stderr)
    for f in rep.failures:
        print(f"  {f}", file=sys.stderr)
    return 1


def run_list(args: argparse.Namespace) -> int:
    from .instances import SETS

    for name, s in SETS.items():
        archs = ", ".join("x".join(map(str, a)) for a in s.archs)
        print(f"{name}: archs {archs}; seeds {list(s.seeds)}; images {list(s.images)}; "
              f"attacks {list(s.attacks)}; {s.description}")
    return 0
