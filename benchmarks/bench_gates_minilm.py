"""Compresso-style L0 gates on all-MiniLM-L6-v2: hard-concrete gates on the 72 heads,
9,216 FFN channels and 384 hidden channels, LoRA (rank 8) on query and value with the
base frozen, distilling the dense model's sentence embeddings; final masks by the
method's own rounding and by exact allocation, physically pruned, then the same short
fine-tune for both.

* sparsity = fraction of the *encoder* parameters (``encoder.*``: 10,646,784 of
  22,713,216; scope "encoder" of ``optprune.train_prune.gates_bert``, CoFi's /
  Compresso's convention). The embedding tables and the pooler lose their columns of
  the pruned hidden channels too, but are not counted in the target; the fraction of
  all parameters (word embeddings included) is reported beside it;
* data, loss and quality as ``bench_train_prune_minilm.py``: packed 32-token sequences
  of stdlib docstrings, loss 1 - cos(e, t) with t the dense model's embedding of the
  same sequence; quality = mean cosine to the dense embeddings of held-out sentences.
  A hidden-pruned model's embedding is placed at its kept coordinates of the dense
  width (``ScatterHidden``), which is what the gated model outputs;
* "own rounding": per gate vector keep round(sum P(open)) gates by log alpha;
  "exact": the most probable mask (sum of gate logits) with the target as a hard
  budget, params in [0.99 (1 - t), (1 - t)] N_enc (``exact_allocation_by_counts``);
* the same fine-tune for both masks: the encoder weights of the pruned model (AdamW,
  lr 5e-5, batch 16), embeddings frozen.

    OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/bench_gates_minilm.py
        [--steps 300] [--warmup 150] [--ft-steps 50] [--init-log-alpha 3] [--gate-lr 0.1]
        [--targets 0.3,0.5] [--seeds 0,1] [--no-hidden] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def cos_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(out, target, dim=-1)).mean()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--ft-steps", type=int, default=50)
    ap.add_argument("--targets", default="0.3,0.5")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3, help="LoRA lr during gate training")
    ap.add_argument("--gate-lr", type=float, default=0.1)
    ap.add_argument("--lambda-lr", type=float, default=0.2)
    ap.add_argument("--init-log-alpha", type=float, default=3.0)
    ap.add_argument("--ft-lr", type=float, default=5e-5)
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds (gates, LoRA, batches)")
    ap.add_argument("--no-hidden", action="store_true",
                    help="gate heads and FFN channels only (the hidden width stays whole)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)

    from optprune.nn.corpus import load_corpus, mean_cosine, pack_token_ids, sentence_embeddings
    from optprune.nn.hf import TokenIdsEncoder, load_minilm
    from optprune.train_prune import own_rounding, train_steps
    from optprune.train_prune.gates_bert import (ScatterHidden, apply_bert_gate_masks,
                                                 bert_masks_params, exact_allocation_by_counts,
                                                 scoped_params, train_compresso_bert)

    t_all = time.perf_counter()
    bert, tok = load_minilm()
    corpus = load_corpus()
    x = pack_token_ids(tok, corpus.score, a.seq_len, a.n_train)
    held = list(corpus.eval[:a.n_eval])
    enc = TokenIdsEncoder(bert)
    with torch.no_grad():
        y = torch.cat([enc(x[i:i + 64]) for i in range(0, x.shape[0], 64)])
    dense_emb = sentence_embeddings(bert, tok, held)
    n_enc, n_all = scoped_params(bert, "encoder"), scoped_params(bert, "all")
    print(f"MiniLM: {n_all} params, {n_enc} in the encoder (the sparsity's base); "
          f"{x.shape[0]} train sequences of {a.seq_len} tokens; {len(held)} held-out sentences",
          flush=True)

    def quality(model, keep_hidden) -> float:
        emb = sentence_embeddings(model, tok, held)
        full = emb.new_zeros(emb.shape[0], dense_emb.shape[1])
        full[:, torch.as_tensor(keep_hidden.nonzero()[0])] = emb
        return mean_cosine(dense_emb, full)

    rows = []
    runs = [(sd, float(v)) for sd in [int(s_) for s_ in a.seeds.split(",")]
            for v in a.targets.split(",")]
    for seed, target in runs:
        t = time.perf_counter()
        res = train_compresso_bert(bert, x, y, target, steps=a.steps, warmup_steps=a.warmup,
                                   batch_size=a.batch_size, lr=a.lr, gate_lr=a.gate_lr,
                                   lambda_lr=a.lambda_lr, scope="encoder", seed=seed,
                                   hidden=not a.no_hidden, init_log_alpha=a.init_log_alpha)
        t_train = time.perf_counter() - t
        h = res.history
        print(f"seed {seed}, target {target:.0%}: {a.steps} gate steps in {t_train:.0f} s; E[s] "
              f"{h[0]['expected_sparsity']:.4f} -> {h[-1]['expected_sparsity']:.4f}, task loss "
              f"{h[0]['task_loss']:.4f} -> {h[-1]['task_loss']:.4f}, lambdas {res.lambdas}",
              flush=True)
        merged = res.merged_model()
        cos_merged = quality(merged, torch.ones(dense_emb.shape[1]).bool().numpy())
        t = time.perf_counter()
        exact, proof = exact_allocation_by_counts(res.gates, target)
        t_exact = time.perf_counter() - t
        print(f"  merged LoRA, no pruning: cos {cos_merged:.4f}; exact allocation "
              f"{t_exact:.3f} s ({proof['termination']})", flush=True)
        row = {"seed": seed, "target": target, "expected_sparsity_end": h[-1]["expected_sparsity"],
               "history": h, "train_s": t_train, "cos_merged_unpruned": cos_merged,
               "exact_proof": proof, "exact_s": t_exact}
        for name, masks in (("own", own_rounding(res.gates)), ("exact", exact)):
            pruned = apply_bert_gate_masks(merged, masks)
            n = scoped_params(pruned, "encoder")
            assert n == bert_masks_params(res.gates, masks), "size formula != pruned model"
            cos0 = quality(pruned, masks.hidden)
            for p in pruned.embeddings.parameters():
                p.requires_grad_(False)
            t = time.perf_counter()
            train_steps(ScatterHidden(TokenIdsEncoder(pruned), masks.hidden), x.float(), y,
                        a.ft_steps, lr=a.ft_lr, batch_size=a.batch_size, loss_fn=cos_loss,
                        seed=seed, params=[p for nm, p in pruned.named_parameters()
                                           if nm.startswith("encoder.")])
            t_ft = time.perf_counter() - t
            cos1 = quality(pruned, masks.hidden)
            s = 1.0 - n / n_enc
            row[name] = {"params_encoder": n, "params_all": scoped_params(pruned, "all"),
                         "sparsity": s, "distance": s - target,
                         "sparsity_all": 1.0 - scoped_params(pruned, "all") / n_all,
                         "cos": cos0, "cos_ft": cos1, "counts": masks.counts(), "ft_s": t_ft}
            print(f"  {name:5s}: encoder params {n} (s = {s:.4f}, {s - target:+.4f}; of all "
                  f"{row[name]['sparsity_all']:.4f}); hidden {masks.counts()['hidden']}, heads "
                  f"{masks.counts()['heads']}, FFN {masks.counts()['ffn']}; cos {cos0:.4f} -> "
                  f"{cos1:.4f} after {a.ft_steps} ft steps ({t_ft:.0f} s)", flush=True)
        rows.append(row)
    head = ("| target | E[s] at end | own: s | dist | cos | cos ft | exact: s | dist | cos | "
            "cos ft |\n|---|---|---|---|---|---|---|---|---|---|")
    keys = [("expected_sparsity_end", None), ("sparsity", "own"), ("distance", "own"),
            ("cos", "own"), ("cos_ft", "own"), ("sparsity", "exact"), ("distance", "exact"),
            ("cos", "exact"), ("cos_ft", "exact")]

    def cells(rs) -> str:
        out = []
        for k, arm in keys:
            v = sum((r[k] if arm is None else r[arm][k]) for r in rs) / len(rs)
            out.append(f"{v:+.4f}" if k == "distance" else f"{v:.4f}")
        return " | ".join(out)

    print(f"\nMean over seeds {a.seeds}:\n" + head)
    for target in sorted({r["target"] for r in rows}):
        rs = [r for r in rows if r["target"] == target]
        print(f"| {target:.0%} | {cells(rs)} |")
    print("\nPer seed:\n" + head.replace("| target |", "| seed | target |").replace(
        "|---|", "|---|---|", 1))
    for r in rows:
        print(f"| {r['seed']} | {r['target']:.0%} | {cells([r])} |")
    print(f"\ntotal time {time.perf_counter() - t_all:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
