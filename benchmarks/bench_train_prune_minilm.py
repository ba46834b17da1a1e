"""LoRAShear-style progressive pruning of all-MiniLM-L6-v2 (heads + FFN channels),
distilling the dense model's sentence embeddings, against one-shot pruning of the
same groups plus the same number of fine-tuning steps.

* groups and exact costs: ``optprune.nn.hf.bert_structures``; Taylor scores with the
  in-batch contrastive distillation loss (``embedding_distill_loss``); the removal
  set chosen exactly (``plan_removal``: 10% of each layer's heads and FFN channels
  protected), the reduction r being a fraction of the *prunable* parameters (heads
  and FFN channels: 10.6M of 22.7M; the 11.7M word embeddings are not prunable);
* progressive: P steps of training (encoder weights; embeddings frozen in both arms)
  with the removed groups shrunk by (P - t - 1)/(P - t) per step, physical removal
  (``prune_bert``), R recovery steps; one-shot: ``prune_bert`` at once, P + R steps;
* training loss: 1 - cos(e, t) with t the dense model's embedding of the same packed
  sequence of 32 stdlib-docstring tokens; quality: mean cosine to the dense
  embeddings of held-out sentences (never trained on);
* ``--lora RANK`` (LoRAShear's setting): every training phase of both arms trains
  only LoRA adapters (peft, rank RANK, alpha 2 RANK) on query and value with the base
  frozen, at ``--lora-lr``. Progressive: the adapters' B rows of removed heads shrink
  with the heads' base rows (``removal_masks``), the adapters are merged, the model is
  pruned (``prune_bert``), fresh adapters train the R recovery steps and are merged;
  one-shot: ``prune_bert``, then adapters for P + R steps, merged.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_prune_minilm.py
        [--period 40] [--recovery 40] [--reductions 0.2,0.5] [--lora 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def cos_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(out, target, dim=-1)).mean()


def encoder_params(bert) -> list:
    return [p for n, p in bert.named_parameters() if n.startswith("encoder.")]


LORA_TARGETS = ("query", "value")


def train_arm(bert, x, y, steps: int, a, seed: int = 0, shrink_plan=None) -> dict:
    """``steps`` of distillation training of ``bert`` in place: encoder weights
    (embeddings frozen) or, with ``a.lora``, LoRA adapters merged at the end. With
    ``shrink_plan`` the plan's removed groups (and their adapter entries) shrink to
    zero over the steps. Returns the shrink record (or {}) and the trained count."""
    from optprune.nn.hf import TokenIdsEncoder
    from optprune.train_prune import add_lora, merge_lora, progressive_shrink, train_steps

    if a.lora:
        pm = add_lora(bert, a.lora, LORA_TARGETS)
        params = [p for p in pm.parameters() if p.requires_grad]
        lr = a.lora_lr
    else:
        for p in bert.embeddings.parameters():
            p.requires_grad_(False)
        params, lr = encoder_params(bert), a.lr
    enc = TokenIdsEncoder(bert)
    out = {"trained_params": sum(p.numel() for p in params)}
    if shrink_plan is not None:
        shr = progressive_shrink(enc, shrink_plan, x, y, steps, lr=lr, batch_size=a.batch_size,
                                 loss_fn=cos_loss, trainable=params, seed=seed)
        out.update(shr)
    else:
        train_steps(enc, x, y, steps, lr=lr, batch_size=a.batch_size, loss_fn=cos_loss,
                    params=params, seed=seed)
    if a.lora:
        merge_lora(pm, trainable=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--period", type=int, default=40)
    ap.add_argument("--recovery", type=int, default=40)
    ap.add_argument("--reductions", default="0.2,0.5")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--lora", type=int, default=0, metavar="RANK",
                    help="train LoRA adapters of this rank on query/value (base frozen)")
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)

    from optprune.nn.corpus import load_corpus, mean_cosine, pack_token_ids, sentence_embeddings
    from optprune.nn.hf import bert_structures, embedding_distill_loss, load_minilm, prune_bert
    from optprune.train_prune import plan_removal

    t0 = time.perf_counter()
    bert, tok = load_minilm()
    corpus = load_corpus()
    x = pack_token_ids(tok, corpus.score, a.seq_len, a.n_train).float()
    held = list(corpus.eval[:a.n_eval])
    ss = bert_structures(bert, seq_len=a.seq_len)
    with torch.no_grad():
        y = torch.cat([ss.model(x[i:i + 64]) for i in range(0, x.shape[0], 64)])
    dense_emb = sentence_embeddings(bert, tok, held)
    total = ss.dense_params
    prunable = total - ss.fixed_params
    print(f"MiniLM: {total} params, {prunable} prunable (heads + FFN); {x.shape[0]} train "
          f"sequences of {a.seq_len} tokens; {len(held)} held-out sentences")
    rows = []
    for r in [float(v) for v in a.reductions.split(",")]:
        red_all = r * prunable / total
        t = time.perf_counter()
        plan = plan_removal(None, x[:128], y[:128], red_all, structures=ss, protect_fraction=0.1,
                            importance="taylor", importance_kw={"loss_fn": embedding_distill_loss})
        t_plan = time.perf_counter() - t

        prog = copy.deepcopy(bert)
        t = time.perf_counter()
        shr = train_arm(prog, x, y, a.period, a, shrink_plan=plan)
        prune_bert(prog, plan.keep, bert_structures(prog, seq_len=a.seq_len))
        cos_after_shrink = mean_cosine(dense_emb, sentence_embeddings(prog, tok, held))
        rec = train_arm(prog, x, y, a.recovery, a, seed=1)
        t_prog = time.perf_counter() - t
        n_prog = sum(p.numel() for p in prog.parameters())

        one = copy.deepcopy(bert)
        prune_bert(one, plan.keep, bert_structures(one, seq_len=a.seq_len))
        cos_raw = mean_cosine(dense_emb, sentence_embeddings(one, tok, held))
        t = time.perf_counter()
        ft = train_arm(one, x, y, a.period + a.recovery, a)
        t_one = time.perf_counter() - t
        row = {"reduction_of_prunable": r, "reduction_of_all": red_all, "params": n_prog,
               "predicted_params": plan.predicted_params, "dense_params": total,
               "removed_norm_first": shr["removed_norms"][0],
               "removed_norm_last": shr["removed_norms"][-1], "lora_rank": a.lora,
               "lr": a.lora_lr if a.lora else a.lr,
               "trained_params": {"shrink": shr["trained_params"],
                                  "recovery": rec["trained_params"],
                                  "one_shot": ft["trained_params"]},
               "cos_progressive": mean_cosine(dense_emb, sentence_embeddings(prog, tok, held)),
               "cos_progressive_before_recovery": cos_after_shrink,
               "cos_one_shot_ft": mean_cosine(dense_emb, sentence_embeddings(one, tok, held)),
               "cos_one_shot_no_ft": cos_raw, "allocation": plan.allocation,
               "plan_s": t_plan, "progressive_s": t_prog, "one_shot_s": t_one}
        rows.append(row)
        print(f"r={r:.0%} of prunable ({red_all:.1%} of all): params {n_prog} "
              f"(predicted {plan.predicted_params}); cos progressive {row['cos_progressive']:.4f}"
              f" (before recovery {cos_after_shrink:.4f}), one-shot+ft "
              f"{row['cos_one_shot_ft']:.4f}, one-shot no ft {cos_raw:.4f}; "
              f"times {t_prog:.0f}s / {t_one:.0f}s", flush=True)
    print("\n| reduction (of prunable) | params kept | progressive | one-shot + ft | one-shot, "
          "no ft |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['reduction_of_prunable']:.0%} | {row['params'] / total:.4f} | "
              f"{row['cos_progressive']:.4f} | {row['cos_one_shot_ft']:.4f} | "
              f"{row['cos_one_shot_no_ft']:.4f} |")
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
