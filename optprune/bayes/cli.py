"""``optprune bmrs``: train a noisy network on digits by SVI and prune it by BMRS."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bmrs", help="BMRS on digits: SVI with multiplicative noise, prune where dF >= 0",
        description="Train a 5 x 50 MLP or a LeNet-5-like CNN on scikit-learn's digits with a "
        "truncated log-normal noise per neuron/channel, then prune by the BMRS rule (dF >= 0), "
        "or, with --budget/--multiple, by the exact allocation maximizing the pruned evidence.")
    p.add_argument("--model", choices=("mlp", "lenet"), default="mlp")
    p.add_argument("--method", choices=("N", "U8", "U4"), default="U8",
                   help="reduced prior: N (spike at theta=e^-20), U8/U4 (p-bit zero bin)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--noise-lr", type=float, default=0.02)
    p.add_argument("--during", action="store_true",
                   help="apply the rule after every epoch from a third of training on")
    p.add_argument("--budget", type=float, default=None, help="kept fraction of parameters")
    p.add_argument("--multiple", type=int, default=None, help="width multiple per layer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the report as JSON here")
    p.set_defaults(func=run_bmrs_cmd)


def lenet5():
    """LeNet-5's shape (6 and 16 channels, 120 and 84 neurons) for 1 x 8 x 8 inputs."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 2 * 2, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def run_bmrs_cmd(args: argparse.Namespace) -> int:
    import torch

    from ..errors import check
    from ..experiments.jsonio import write_json_atomic
    from ..nn.models import MLP
    from ..experiments import accuracy, load_digits_split
    from . import attach_noise, bmrs_allocate, train_svi

    check(args.epochs >= 1, "The '--epochs' of optprune bmrs", "a positive integer", args.epochs)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = load_digits_split(seed=args.seed)
    shape: tuple[int, ...]
    if args.model == "mlp":
        data, model, shape = data.flat(), MLP(64, [50] * 5, 10), (64,)
    else:
        model, shape = lenet5(), (1, 8, 8)
    nm = attach_noise(model, shape)
    hist = train_svi(nm, data.x_train, data.y_train, epochs=args.epochs, seed=args.seed,
                     noise_lr=args.noise_lr, prune_during=args.method if args.during else None,
                     prune_start_epoch=args.epochs // 3)
    acc_train_end = accuracy(nm, data.x_test, data.y_test)
    cons = {}
    if args.budget is not None:
        cons["budget"] = args.budget
    if args.multiple is not None:
        cons["multiples"] = args.multiple
    sel = bmrs_allocate(nm, args.method, **cons)
    acc = accuracy(nm, data.x_test, data.y_test)
    pruned = nm.pruned_model()
    report = {
        "model": args.model, "method": args.method, "epochs": args.epochs,
        "pruned_during_training": bool(args.during), "accuracy_before_final_selection":
        acc_train_end, "accuracy": acc, "selection": sel.to_dict(),
        "params_dense": nm.structures.dense_params,
        "params_pruned_model": sum(p.numel() for p in pruned.parameters()),
        "history": hist.to_dict(),
    }
    print(f"BMRS_{args.method} on {args.model}: pruned {sel.n_pruned} of {sel.keep.size} "
          f"structures; parameters {report['params_pruned_model']} of "
          f"{report['params_dense']}; test accuracy {acc:.4f} (before the selection "
          f"{acc_train_end:.4f})")
    if args.out:
        write_json_atomic(args.out, report)
        print(f"report written to {args.out}")
    return 0
