"""``optprune demo`` and ``optprune prune-hf``."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: optprune's default pipeline vs the usual rules",
                       description="Train an MLP and a small ViT on scikit-learn's digits, "
                       "prune them with optprune.prune's default pipeline (loss-calibrated "
                       "objective, exact search, reconstruction) and with the usual rules under "
                       "a parameter budget, a MACs cap and width multiples, fine-tune each "
                       "identically, and compare.")
    p.add_argument("--out", default="optprune-demo", help="output folder (report.json, plot)")
    p.add_argument("--budget", type=float, default=0.5, help="kept fraction of parameters")
    p.add_argument("--flops", type=float, default=0.6, help="kept fraction of MACs (cap)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long version (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo_cmd)
    try:
        from .hf_cli import add_hf_parsers
    except ImportError:
        return
    add_hf_parsers(sub)


def run_demo_cmd(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from .demo import DemoConfig, run_demo

    torch.set_num_threads(1)
    cfg = DemoConfig.tiny() if args.tiny else DemoConfig()
    cfg = dataclasses.replace(cfg, budget=args.budget, flops=args.flops, seed=args.seed)
    run_demo(args.out, cfg)
    return 0
