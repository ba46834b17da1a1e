"""``optprune systolic cycles | plan | sasp``: the systolic-array latency model,
tile-aligned allocation and SASP tile pruning from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ValidationError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("systolic", help="systolic-array latency model, tile-aligned allocation, "
                       "SASP tile pruning",
                       description="Cycle model of GEMMs on an R x C systolic array "
                       "(SCALE-Sim's compute model) and pruning planned for it.")
    ss = p.add_subparsers(dest="systolic_command", required=True, metavar="SUBCOMMAND")

    c = ss.add_parser("cycles", help="cycles, folds, utilization and SRAM traffic of one GEMM",
                      description="Cycles of an M x K by K x N GEMM on an R x C array.")
    c.add_argument("--array", required=True, metavar="RxC", help="array size, e.g. 8x8")
    c.add_argument("--dataflow", required=True, help="os | ws | is")
    c.add_argument("--gemm", required=True, nargs=3, metavar=("M", "K", "N"),
                   help="GEMM dimensions: inputs M x K, weights K x N")
    c.add_argument("--bandwidth", type=float, default=None, metavar="WORDS_PER_CYCLE",
                   help="SRAM words per cycle; adds the bandwidth-stall model")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=run_cycles)

    for name, helptext in (("plan", "tile-aligned allocation of heads and FFN channels for an "
                            "array (exact, with a cycle cap or an importance floor)"),
                           ("sasp", "SASP: prune weight tiles of the array's size, exact or by "
                            "magnitude threshold")):
        q = ss.add_parser(name, help=helptext, description=helptext)
        q.add_argument("--array", required=True, metavar="RxC")
        q.add_argument("--model", default="vit-digits", choices=["vit-digits", "vit"],
                       help="vit-digits: the digits ViT of optprune.experiments (width 32, 3 "
                       "blocks of 4 heads of 8, FFN 64) trained --epochs on the digits split; "
                       "vit: the same ViT untrained")
        q.add_argument("--epochs", type=int, default=None,
                       help="training epochs of vit-digits (default: the recipe's, "
                       "optprune.experiments.VIT_EPOCHS)")
        q.add_argument("--batch", type=int, default=1, help="samples per inference batch")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--backend", default="highs")
        q.add_argument("--json", action="store_true")
        if name == "plan":
            q.add_argument("--dataflow", default="ws", help="os | ws | is (default ws)")
            g = q.add_mutually_exclusive_group(required=True)
            g.add_argument("--latency-cap", type=float, metavar="FRACTION",
                           help="maximize importance with model cycles <= FRACTION x dense")
            g.add_argument("--importance-floor", type=float, metavar="FRACTION",
                           help="minimize cycles keeping >= FRACTION of the total importance")
            q.add_argument("--importance", default="magnitude",
                           help="magnitude | taylor | wanda | flap | l1 (taylor/wanda/flap use "
                           "the digits training data)")
            q.add_argument("--params-budget", type=float, default=None, metavar="FRACTION",
                           help="also keep at most FRACTION of the dense model's parameters")
            q.add_argument("--min-keep", type=float, default=0.0,
                           help="each layer keeps at least this fraction of its width")
            q.add_argument("--no-align", action="store_true",
                           help="do not restrict widths to the tops of the latency steps")
            q.set_defaults(func=run_plan)
        else:
            g = q.add_mutually_exclusive_group(required=True)
            g.add_argument("--prune-rate", type=float, metavar="FRACTION",
                           help="drop at least this fraction of the tiles")
            g.add_argument("--cycle-cap", type=float, metavar="FRACTION",
                           help="model cycles at most this fraction of dense")
            q.add_argument("--importance", default="frobenius", choices=["frobenius", "taylor"])
            q.add_argument("--normalize", default="matrix", choices=["none", "matrix"],
                           help="divide tile scores by their matrix's mean (default matrix)")
            q.add_argument("--method", default="exact", choices=["exact", "threshold"])
            q.add_argument("--max-rate", default="", metavar="KIND=F,...",
                           help="per-matrix bounds, e.g. qkv=0.5,proj=0.5,ffn_in=0.6,ffn_out=0.6")
            q.set_defaults(func=run_sasp)


def _int(v: str, what: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise ValidationError(f"The GEMM dimension {what} must be a positive integer; got "
                              f"{v!r}.") from None


def run_cycles(args: argparse.Namespace) -> int:
    from .systolic import gemm_cost

    M, K, N = (_int(v, w) for v, w in zip(args.gemm, "MKN"))
    cost = gemm_cost(M, K, N, args.array, args.dataflow, args.bandwidth)
    d = cost.to_dict()
    if args.json:
        print(json.dumps(d))
        return 0
    print(f"GEMM {M}x{K} * {K}x{N} on a {d['array']} array, {d['dataflow_name']}")
    print(f"  mapping (Sr, Sc, T)  = ({cost.sr}, {cost.sc}, {cost.t})")
    print(f"  folds                = {cost.folds} ({cost.row_folds} x {cost.col_folds}), "
          f"{cost.cycles_per_fold} cycles each")
    print(f"  cycles               = {cost.cycles}")
    if cost.bandwidth_words_per_cycle is not None:
        print(f"  stall cycles         = {cost.stall_cycles} (total {cost.total_cycles} at "
              f"{cost.bandwidth_words_per_cycle:g} words/cycle)")
    print(f"  utilization          = {cost.utilization:.4f}")
    print(f"  mapping efficiency   = {cost.mapping_efficiency:.4f}")
    print(f"  sram_reads           = {cost.sram_reads} (ifmap {cost.ifmap_reads}, "
          f"filter {cost.filter_reads})")
    print(f"  sram_writes          = {cost.sram_writes}")
    return 0


def _model(args: argparse.Namespace) -> Any:
    import torch

    from ..experiments.recipes import VIT_EPOCHS, pretrained_digits_vit

    torch.set_num_threads(1)
    epochs = VIT_EPOCHS if args.epochs is None else args.epochs
    if epochs < 0:
        raise ValidationError(f"--epochs must be a non-negative integer; got {epochs}.")
    return pretrained_digits_vit(epochs if args.model == "vit-digits" else 0, seed=args.seed)


def run_plan(args: argparse.Namespace) -> int:
    from ..nn.importance import score
    from ..nn.structures import discover
    from ..solve import get_backend
    from ..experiments.data import DIGITS_SHAPE
    from .plan import plan_allocation
    from .systolic import check_dataflow, parse_array

    parse_array(args.array)
    check_dataflow(args.dataflow)
    get_backend(args.backend)
    dv = _model(args)
    s = discover(dv.model, DIGITS_SHAPE)
    sc = score(s, args.importance, (dv.data.x_train, dv.data.y_train))
    r = plan_allocation(s, sc, args.array, args.dataflow, batch=args.batch,
                        latency_cap=args.latency_cap, importance_floor=args.importance_floor,
                        params_budget=args.params_budget, min_keep=args.min_keep,
                        align=not args.no_align, backend=args.backend)
    d = r.to_dict()
    d["model"] = {"name": args.model, "test_accuracy": dv.test_accuracy, "epochs": dv.epochs}
    if args.json:
        print(json.dumps(d))
        return 0
    print(f"tile-aligned allocation on {r.array} ({r.dataflow}), batch {r.batch}: "
          f"{r.termination}, gap {r.gap}")
    print(f"  cycles {r.cycles} of {r.dense_cycles} dense (speedup {r.speedup:.3f}); "
          f"importance kept {r.retained_importance:.6g} of {r.total_importance:.6g}")
    for row in r.layers:
        al = f" (multiple of {row['aligned_multiple']})" if row["aligned_multiple"] else ""
        print(f"  {row['layer']:<22} {row['kind']:<5} {row['kept']:>4}/{row['width']:<4}{al:<18} "
              f"cycles {row['cycles']:>7} / {row['dense_cycles']}")
    for nm, b in r.baselines.items():
        print(f"  baseline {nm:<15} importance {b['retained_importance']:.6g}  cycles "
              f"{b['cycles']}  {'feasible' if b['feasible'] else 'INFEASIBLE'}")
    return 0


def _max_rate(spec: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            k, v = part.split("=")
            out[k.strip()] = float(v)
        except ValueError:
            raise ValidationError(f"--max-rate must look like qkv=0.5,ffn_in=0.6; got "
                                  f"{spec!r}.") from None
    return out


def run_sasp(args: argparse.Namespace) -> int:
    from ..solve import get_backend
    from ..experiments.data import DIGITS_SHAPE
    from ..experiments.training import accuracy
    from .systolic import parse_array
    from .tiles import apply_tile_masks, sasp_prune, tile_grids, tile_importance

    parse_array(args.array)
    get_backend(args.backend)
    max_rate = _max_rate(args.max_rate)
    dv = _model(args)
    model, data = dv.model, dv.data
    grids, dense = tile_grids(model, DIGITS_SHAPE, args.array, batch=args.batch)
    sc = tile_importance(model, grids, args.importance, (data.x_train, data.y_train),
                         DIGITS_SHAPE, normalize=args.normalize)
    r = sasp_prune(grids, dense, sc, prune_rate=args.prune_rate, cycle_cap=args.cycle_cap,
                   max_rate=max_rate, method=args.method, backend=args.backend)
    pruned = apply_tile_masks(model, grids, r.keep)
    d = r.to_dict()
    d["test_accuracy_dense"] = dv.test_accuracy
    d["test_accuracy_pruned"] = accuracy(pruned, data.x_test, data.y_test)
    if args.json:
        d["per_matrix"] = r.per_matrix
        print(json.dumps(d))
        return 0
    print(f"SASP on {r.array} ({r.method}): kept {r.kept_tiles}/{r.n_tiles} tiles "
          f"(prune rate {r.prune_rate:.3f}), cycles {r.cycles}/{r.dense_cycles} "
          f"(speedup {r.speedup:.3f}), {r.termination}")
    print(f"  test accuracy {d['test_accuracy_dense']:.4f} dense -> "
          f"{d['test_accuracy_pruned']:.4f} pruned (no fine-tuning)")
    for row in r.per_matrix:
        print(f"  {row['module']:<20} {row['kind']:<8} kept {row['kept']:>4}/{row['tiles']:<4} "
              f"cycles {row['cycles']:>7}/{row['dense_cycles']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main())
