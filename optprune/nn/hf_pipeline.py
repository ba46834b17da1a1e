"""The Hugging Face pipeline as library functions: score -> problem -> allocate -> prune
-> save, for any model :func:`optprune.nn.structures.discover` covers.

:func:`prune_hf` is ``optprune.prune`` on a Hugging Face model with calibration inputs in
the Hugging Face form (a dict of input_ids / attention_mask, or pixel_values), then
``save_pretrained`` (with the tokenizer when given); the saved directory reloads with
:func:`optprune.nn.hf.load_pruned`. :func:`prune_minilm` is the experiment behind
``optprune prune-hf``: all-MiniLM-L6-v2 (real weights, offline), calibration on
standard-library docstring sentences, several reductions of the prunable parameters
from one discovery and one scoring, quality = mean cosine similarity of the sentence
embeddings to the dense model's on held-out sentences.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check
from .structures import StructureSet

__all__ = ["prune_hf", "prune_minilm", "IMPORTANCE_CHOICES"]

IMPORTANCE_CHOICES = ("flap-sum", "flap", "magnitude", "wanda", "taylor")


def prune_hf(model: nn.Module, data: Any, importance: Any = "flap", budget: Any = 0.5, *,
             structures: StructureSet | None = None, save: str | os.PathLike | None = None,
             tokenizer: Any = None, **prune_kw: Any) -> tuple[nn.Module, Any]:
    """Prune a Hugging Face model exactly and (with ``save``) write it with
    ``save_pretrained``. Arguments as :func:`optprune.prune`; ``data`` is calibration
    data in any form :mod:`optprune.nn.calib` takes (a dict of model inputs is the usual
    one). Returns (pruned model, PruneReport); the model carries
    ``config.optprune_pruned`` (pruned shapes and per-layer widths)."""
    from .pruning import prune

    check(hasattr(model, "save_pretrained") and getattr(model, "config", None) is not None,
          "The 'model' of prune_hf", "a Hugging Face PreTrainedModel (with config and "
          "save_pretrained)", type(model).__name__, "Use optprune.prune for other models.")
    pruned, report = prune(model, importance, budget, data=data, structures=structures,
                           **prune_kw)
    if save is not None:
        path = Path(save)
        hf_model: Any = pruned  # a PreTrainedModel (checked above); torch types it as a Module
        hf_model.save_pretrained(path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    return pruned, report


def _importance(name: str, dense: nn.Module, calib: dict[str, torch.Tensor]
                ) -> tuple[str, Any, dict[str, Any]]:
    """(criterion, calibration data, its keyword arguments) of a CLI importance name."""
    from .hf import embedding_distill_loss

    if name == "flap-sum":
        return "flap", calib, {"aggregate": "sum"}
    if name == "magnitude":
        return "magnitude", None, {}
    if name == "taylor":
        # Packed calibration sequences have no padding: the sentence embedding is the
        # normalised mean over all tokens, as sentence-transformers computes it.
        with torch.no_grad():
            target = F.normalize(dense(**calib).last_hidden_state.mean(1), dim=-1)

        def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return embedding_distill_loss(F.normalize(out.mean(1), dim=-1), y)

        return "taylor", (calib, target), {"loss_fn": loss, "batch_size": 64}
    return name, calib, {}


def prune_minilm(reductions: Sequence[float] = (0.3, 0.5), importance: str = "flap-sum",
                 selection: str = "exact", seq_len: int = 64, n_calib: int = 64,
                 n_eval: int = 256, rel_gap: float = 1e-6, time_limit_s: float = 60.0,
                 save: str | os.PathLike | None = None, log=None) -> dict[str, Any]:
    """Prune all-MiniLM-L6-v2's heads and FFN channels to each reduction (fraction of
    the prunable parameters removed) and judge each pruned encoder by the mean cosine
    similarity of its sentence embeddings to the dense model's on ``n_eval`` held-out
    sentences. One discovery and one scoring serve every reduction. Returns a JSON-ready
    dict (per reduction: parameters measured and predicted, per-layer widths, the
    solver's proof, the mean cosine, the saved directory)."""
    from .corpus import load_corpus, mean_cosine, pack_token_ids, sentence_embeddings
    from .hf import bert_widths, load_minilm
    from .importance import score
    from .structures import discover

    for r in reductions:
        check(isinstance(r, (int, float)) and 0 < r < 1, "A reduction of prune_minilm",
              "in (0, 1) (the fraction of the prunable parameters removed)", r)
    check(importance in IMPORTANCE_CHOICES, "The 'importance' of prune_minilm",
          f"one of {list(IMPORTANCE_CHOICES)}", importance)
    log = log or (lambda *_: None)
    t0 = time.perf_counter()
    model, tok = load_minilm()
    corpus = load_corpus()
    held = list(corpus.eval[:n_eval])
    ids = pack_token_ids(tok, corpus.score, seq_len, n_calib).long()
    calib = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ss = discover(model, data=calib)
    dense_emb = sentence_embeddings(model, tok, held)
    crit, data, kw = _importance(importance, model, calib)
    scores = score(ss, crit, data, **kw)
    costs = ss.costs()["params"]
    prunable, fixed = float(costs.sum()), float(ss.fixed_params)
    out: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2", "importance": importance, "selection": selection,
        "dense_params": ss.dense_params, "prunable_params": prunable,
        "eval_sentences": len(held), "results": []}
    log(f"all-MiniLM-L6-v2: {ss.dense_params:,} parameters, {prunable:,.0f} in {len(ss)} heads "
        f"and FFN channels; scored with {importance} on {ids.shape[0]} x {seq_len} tokens; "
        f"quality on {len(held)} held-out sentences")
    for r in reductions:
        budget = (fixed + (1 - r) * prunable) / ss.dense_params
        d = None if save is None else Path(save) / f"minilm-{importance}-{int(round(100 * r))}"
        pruned, rep = prune_hf(model, None, scores, budget, structures=ss, save=d, tokenizer=tok,
                               selection=selection, rel_gap=rel_gap, time_limit_s=time_limit_s,
                               baselines=False, allow_empty_layers=True)
        q = mean_cosine(dense_emb, sentence_embeddings(pruned, tok, held))
        a = rep.allocation or {}
        proof = {k: a[k] for k in ("termination", "objective", "bound", "gap") if k in a}
        w = bert_widths(pruned)
        row = {"reduction": r, "params": rep.after["params"],
               "predicted_params": rep.predicted["params"], "heads": w["heads"],
               "ffn": w["intermediate"], "mean_cosine": q, **proof}
        if d is not None:
            row["saved"] = str(d)
        out["results"].append(row)
        gap = proof.get("gap")
        log(f"  remove {r:.0%} of prunable: {row['params']:,} params, heads {row['heads']}, "
            f"mean cosine {q:.4f}" + (f", {proof['termination']} gap {gap:.1e}" if proof else ""))
    out["total_time_s"] = time.perf_counter() - t0
    return out
