"""``optprune gates`` and ``optprune progressive``: the training-based pruners on the
digits ViT (pre-trained first, about 10 s), with the exact final decision."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, cast


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gates", help="Compresso-style L0 gates on the digits ViT; own rounding vs exact mask",
        description="Pre-train the digits ViT, train hard-concrete gates on its heads, FFN "
        "channels and hidden width (LoRA rank 8 on q and v, base frozen) towards a sparsity "
        "target, then turn the gates into a mask twice: by the method's own rounding and by "
        "the exact allocation (the most probable mask with params <= (1 - target) N as a "
        "hard budget). Prints the achieved sparsity and test accuracy of both physically "
        "pruned models and the solver's proof.")
    p.add_argument("--target", type=float, default=0.3,
                   help="fraction of the ViT's parameters to remove (default 0.3)")
    p.add_argument("--steps", type=int, default=400, help="gate training steps (default 400)")
    p.add_argument("--warmup", type=int, default=None,
                   help="steps over which the target ramps up (default steps/2)")
    p.add_argument("--finetune", type=int, default=0,
                   help="full fine-tuning steps of both pruned models (default 0)")
    _common(p, "the exact-allocation pruned ViT")
    p.set_defaults(func=run_gates_cmd)

    p = sub.add_parser(
        "progressive", help="LoRAShear-style progressive pruning of the digits ViT",
        description="Pre-train the digits ViT, choose the heads and FFN channels to remove "
        "exactly (Taylor scores, the most important of each layer protected, kept params "
        "<= (1 - reduction) N), shrink them to exactly zero over a period while training, "
        "remove them physically and fine-tune (recovery). Prints the plan, the parameters "
        "kept and the test accuracy; --one-shot adds the one-shot baseline.")
    p.add_argument("--reduction", type=float, default=0.2,
                   help="fraction of the ViT's parameters to remove (default 0.2)")
    p.add_argument("--period", type=int, default=150, help="shrink period P in steps")
    p.add_argument("--recovery", type=int, default=150, help="recovery fine-tuning steps")
    p.add_argument("--protect", type=float, default=0.1,
                   help="fraction of each layer's heads / FFN channels that is unprunable")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora", type=int, default=0, metavar="RANK",
                   help="train only LoRA adapters of this rank on q, v during the period")
    p.add_argument("--one-shot", action="store_true",
                   help="also remove the same groups at once and fine-tune period + "
                   "recovery steps (the baseline), and report it side by side")
    _common(p, "the progressively pruned ViT")
    p.set_defaults(func=run_progressive_cmd)


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--epochs", type=int, default=None,
                   help="pre-training epochs of the dense digits ViT (default: the recipe's, "
                   "optprune.experiments.VIT_EPOCHS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="MODEL.pt",
                   help=f"save {what} (optprune.experiments.load_vit reads it)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")


def _check_int(value: Any, flag: str, cmd: str, least: int) -> None:
    from ..errors import check

    check(isinstance(value, int) and value >= least, f"The '{flag}' of optprune {cmd}",
          "a positive integer" if least == 1 else f"an integer >= {least}", value)


def _check_fraction(value: float, flag: str, cmd: str, upper: float, why: str = "") -> None:
    from ..errors import check

    check(math.isfinite(value) and 0 < value < upper, f"The '{flag}' of optprune {cmd}",
          f"in (0, {upper:.4f})" + (f" ({why})" if why else ""), value,
          "Lower it." if value >= upper and upper < 1 else "")


def _check_paths(args: argparse.Namespace, cmd: str) -> None:
    """Fail before training, not after it, when an output file cannot be written."""
    import os

    from ..errors import check

    for flag, path in (("--out", args.out), ("--json", args.json)):
        if path:
            parent = os.path.dirname(os.path.abspath(path))
            check(os.path.isdir(parent) and not os.path.isdir(path),
                  f"The '{flag}' of optprune {cmd}", "a file path in an existing directory",
                  path)


def _dense(args: argparse.Namespace):
    import torch

    from ..experiments.recipes import pretrained_digits_vit

    torch.set_num_threads(1)
    dv = pretrained_digits_vit(seed=args.seed,
                               **({} if args.epochs is None else {"epochs": args.epochs}))
    print(f"digits ViT: {dv.dense_params} params, test accuracy {dv.test_accuracy:.4f} "
          f"(pre-trained {dv.epochs} epochs, {dv.pretrain_s:.1f} s; "
          f"{dv.data.x_test.shape[0]} test images)")
    return dv


def _write(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if args.json:
        from ..experiments.jsonio import write_json_atomic

        write_json_atomic(args.json, report)
        print(f"report written to {args.json}")


def run_gates_cmd(args: argparse.Namespace) -> int:
    from .gates import (CompressoGates, evaluate_masks, exact_allocation, own_rounding,
                        train_compresso)
    from ..errors import check
    from ..experiments.recipes import digits_vit, save_vit
    from ..experiments.training import accuracy
    from .progressive import train_steps

    cmd = "gates"
    _check_paths(args, cmd)
    _check_int(args.steps, "--steps", cmd, 1)
    _check_int(args.finetune, "--finetune", cmd, 0)
    if args.epochs is not None:
        _check_int(args.epochs, "--epochs", cmd, 0)
    if args.warmup is not None:
        _check_int(args.warmup, "--warmup", cmd, 1)
        check(args.warmup <= args.steps, f"The '--warmup' of optprune {cmd}",
              f"at most --steps ({args.steps})", args.warmup)
    smax = CompressoGates(digits_vit()).max_sparsity()
    _check_fraction(args.target, "--target", cmd, smax,
                    "the most the gates can remove: every head and FFN channel and all but one "
                    "hidden channel")
    dv = _dense(args)
    d = dv.data
    res = train_compresso(dv.model, d.x_train, d.y_train, args.target, steps=args.steps,
                          warmup_steps=args.warmup, seed=args.seed)
    es = res.history[-1]["expected_sparsity"]
    print(f"gates: {args.steps} steps towards sparsity {args.target:.4f} in "
          f"{res.train_time_s:.1f} s; E[s] at the end {es:.4f}; multipliers "
          f"lambda_1 {res.lambdas[0]:.4f}, lambda_2 {res.lambdas[1]:.4f}")
    import torch

    with torch.no_grad():
        masks = {"own rounding": own_rounding(res.gates)}
    t = time.perf_counter()
    masks["exact allocation"], proof = exact_allocation(res.gates, args.target)
    t_exact = time.perf_counter() - t
    report: dict[str, Any] = {"target": args.target, "steps": args.steps, "seed": args.seed,
                              "dense_params": dv.dense_params,
                              "dense_accuracy": dv.test_accuracy,
                              "expected_sparsity_end": es, "lambdas": list(res.lambdas),
                              "exact_proof": proof, "exact_s": t_exact, "masks": {}}
    models = {}
    for name, m in masks.items():
        ev = evaluate_masks(res, m, d.x_test, d.y_test)
        pruned = models[name] = ev.pop("model")
        if args.finetune:
            train_steps(pruned, d.x_train, d.y_train, args.finetune, lr=1e-3, seed=args.seed)
            ev["accuracy_finetuned"] = accuracy(pruned, d.x_test, d.y_test)
        report["masks"][name.replace(" ", "_")] = ev
        ft = (f", after {args.finetune} fine-tuning steps {ev['accuracy_finetuned']:.4f}"
              if args.finetune else "")
        c = ev["counts"]
        print(f"{name + ':':18s}sparsity {ev['sparsity']:.4f} ({ev['params']} of "
              f"{ev['dense_params']} params kept; {ev['distance_from_target']:+.4f} from the "
              f"target), test accuracy {ev['accuracy']:.4f}{ft}; kept hidden {c['hidden']}, "
              f"heads {c['heads']}, FFN {c['ffn']}")
    print(f"solver: {proof['termination']}, objective {proof['objective']:.6g}, bound "
          f"{proof['bound']:.6g}, gap {proof['gap']:.2e}, {proof['solve_time_s']:.2f} s "
          "(objective: sum of the kept gates' logits)")
    if args.out:
        save_vit(models["exact allocation"], args.out, command="gates", target=args.target,
                 seed=args.seed)
        print(f"exact-allocation ViT saved to {args.out}")
    _write(args, report)
    return 0


def run_progressive_cmd(args: argparse.Namespace) -> int:
    from ..errors import check
    from ..experiments.recipes import digits_vit, save_vit
    from ..experiments.training import accuracy
    from ..nn.models import ViT
    from ..nn.structures import discover
    from .progressive import max_reduction, one_shot_prune, plan_removal, progressive_prune

    cmd = "progressive"
    _check_paths(args, cmd)
    _check_int(args.period, "--period", cmd, 1)
    _check_int(args.recovery, "--recovery", cmd, 0)
    if args.epochs is not None:
        _check_int(args.epochs, "--epochs", cmd, 0)
    _check_int(args.lora, "--lora", cmd, 0)
    check(math.isfinite(args.protect) and 0 <= args.protect < 1,
          f"The '--protect' of optprune {cmd}", "in [0, 1)", args.protect)
    check(math.isfinite(args.lr) and args.lr > 0, f"The '--lr' of optprune {cmd}", "positive",
          args.lr)
    shape = (1, 8, 8)
    rmax = max_reduction(discover(digits_vit(), shape), args.protect)
    _check_fraction(args.reduction, "--reduction", cmd, rmax,
                    f"the most removable with --protect {args.protect}: the protected heads "
                    "and FFN channels and one of each per block stay")
    dv = _dense(args)
    d = dv.data
    plan = plan_removal(dv.model, d.x_train, d.y_train, args.reduction, input_shape=shape,
                        protect_fraction=args.protect)
    removed = [g for g, k in zip(plan.structures.groups, plan.keep) if not k]
    n_heads = sum(g.kind == "head" for g in removed)
    a = plan.allocation
    print(f"plan: remove {len(removed)} of {len(plan.keep)} groups ({n_heads} heads, "
          f"{len(removed) - n_heads} FFN channels); {int(plan.protected.sum())} protected; "
          f"kept params {plan.predicted_params} of {plan.dense_params} (budget "
          f"{(1 - args.reduction) * plan.dense_params:.0f}); solver {a['termination']}, "
          f"objective {a['objective']:.6g}, bound {a['bound']:.6g}, gap {a['gap']:.2e}")
    pruned, rep = progressive_prune(dv.model, d.x_train, d.y_train, args.reduction, plan=plan,
                                    period_steps=args.period, recovery_steps=args.recovery,
                                    lr=args.lr, lora=args.lora > 0,
                                    lora_rank=max(args.lora, 1), seed=args.seed,
                                    input_shape=shape)
    acc = accuracy(pruned, d.x_test, d.y_test)
    trained = f"LoRA rank {args.lora} on q, v" if args.lora else "all weights"
    print(f"progressive: {args.period} shrink steps ({trained}; removed-entry norm "
          f"{rep.removed_norm_first:.4g} after the first step, {rep.removed_norm_last:.4g} "
          f"after the last), {args.recovery} recovery steps; params {rep.params} of "
          f"{rep.dense_params} ({rep.params_ratio:.4f} kept), test accuracy {acc:.4f} "
          f"({sum(rep.times_s.values()):.1f} s)")
    report = {"reduction": args.reduction, "seed": args.seed, "dense_accuracy": dv.test_accuracy,
              "removed_ids": plan.removed_ids, "progressive": rep.to_dict(),
              "progressive_accuracy": acc}
    if args.one_shot:
        t = time.perf_counter()
        steps = args.period + args.recovery
        base = one_shot_prune(dv.model, plan, d.x_train, d.y_train, steps, lr=args.lr,
                              seed=args.seed, input_shape=shape)
        raw = one_shot_prune(dv.model, plan, d.x_train, d.y_train, 0, input_shape=shape)
        report["one_shot_accuracy"] = accuracy(base, d.x_test, d.y_test)
        report["one_shot_no_finetune_accuracy"] = accuracy(raw, d.x_test, d.y_test)
        print(f"one-shot: same groups removed at once, {steps} fine-tuning steps: params "
              f"{sum(p.numel() for p in base.parameters())}, test accuracy "
              f"{report['one_shot_accuracy']:.4f} (before fine-tuning "
              f"{report['one_shot_no_finetune_accuracy']:.4f}; "
              f"{time.perf_counter() - t:.1f} s)")
    if args.out:
        # pruned in place: still the digits ViT (progressive_prune is typed for any module)
        save_vit(cast(ViT, pruned), args.out, command="progressive", reduction=args.reduction,
                 seed=args.seed)
        print(f"progressively pruned ViT saved to {args.out}")
    _write(args, report)
    return 0
