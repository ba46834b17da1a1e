"""Training-based pruners on the digits ViT, side by side in one run:

* Compresso-style L0 gates (LoRA rank 8 on q and v, base frozen) at 30% and 50%
  parameter targets; final masks by the method's own rounding and by exact
  allocation on the learned gate scores with the target as a hard budget: distance
  from the target and test accuracy (of the physically pruned model, directly and
  after the same short full fine-tuning for both masks).
* LoRAShear-style progressive pruning (exact removal plan, shrinking over P steps
  while training, physical removal, recovery) at 20% and 50% parameter reduction,
  against one-shot pruning of the same groups plus the same number of fine-tuning
  steps (P + recovery).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_prune.py [--seeds 0,1]
        [--epochs 15] [--gate-steps 400] [--period 150] [--recovery 150] [--json OUT]

The model is the digits ViT of optprune.experiments (the one recipe and split of every
digits section of BENCHMARKS.md), pre-trained only --epochs (15, not the recipe's 40: short on
purpose, so every arm that trains further can be compared with the others). Every accuracy
is on the held-out quarter of scikit-learn's digits (450 images).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from optprune.experiments.jsonio import write_json_atomic


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=15, help="dense pre-training epochs")
    ap.add_argument("--gate-steps", type=int, default=400)
    ap.add_argument("--finetune", type=int, default=100,
                    help="full fine-tuning steps after the Compresso masks (both masks)")
    ap.add_argument("--period", type=int, default=150, help="LoRAShear shrink period P")
    ap.add_argument("--recovery", type=int, default=150)
    ap.add_argument("--lora-progressive", action="store_true",
                    help="train LoRA adapters only (base frozen) during the shrink period")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    runs = [one_seed(a, int(s)) for s in a.seeds.split(",")]
    summarize(runs)
    print(f"\ntotal time {time.perf_counter() - t0:.0f} s")
    if a.json:
        write_json_atomic(a.json, runs)


def one_seed(a, seed: int) -> dict:
    from optprune.experiments import accuracy, pretrained_digits_vit
    from optprune.train_prune import (evaluate_masks, exact_allocation, one_shot_prune,
                                      own_rounding, plan_removal, progressive_prune,
                                      train_compresso, train_steps)

    dv = pretrained_digits_vit(epochs=a.epochs, seed=seed)
    vit, d = dv.model, dv.data
    out = {"seed": seed, "dense_acc": dv.test_accuracy, "dense_params": dv.dense_params,
           "pretrain_s": dv.pretrain_s, "compresso": [], "loreshear": []}
    print(f"seed {seed}: dense ViT {out['dense_params']} params, test acc {out['dense_acc']:.4f}")

    for target in (0.3, 0.5):
        t = time.perf_counter()
        res = train_compresso(vit, d.x_train, d.y_train, target, steps=a.gate_steps,
                              warmup_steps=a.gate_steps // 2, seed=seed)
        row = {"target": target, "train_s": res.train_time_s,
               "expected_sparsity_end": res.history[-1]["expected_sparsity"],
               "lambdas": res.lambdas}
        with torch.no_grad():
            masks = {"own_rounding": own_rounding(res.gates)}
        t1 = time.perf_counter()
        masks["exact"], proof = exact_allocation(res.gates, target)
        row["exact_proof"] = proof
        row["exact_s"] = time.perf_counter() - t1
        merged = res.merged_vit()
        for name, m in masks.items():
            ev = evaluate_masks(res, m, d.x_test, d.y_test)
            pruned = ev.pop("model")
            train_steps(pruned, d.x_train, d.y_train, a.finetune, lr=1e-3, seed=seed)
            ev["accuracy_finetuned"] = accuracy(pruned, d.x_test, d.y_test)
            row[name] = ev
        row["total_s"] = time.perf_counter() - t
        out["compresso"].append(row)
        print(f"  compresso target {target}: E[s]={row['expected_sparsity_end']:.4f}; "
              + "; ".join(f"{n} s={row[n]['sparsity']:.4f} acc={row[n]['accuracy']:.4f}"
                          f"/{row[n]['accuracy_finetuned']:.4f}" for n in masks))
        del merged

    for red in (0.2, 0.5):
        t = time.perf_counter()
        plan = plan_removal(vit, d.x_train, d.y_train, red, protect_fraction=0.1)
        pr, rep = progressive_prune(vit, d.x_train, d.y_train, red, plan=plan,
                                    period_steps=a.period, recovery_steps=a.recovery, lr=1e-3,
                                    lora=a.lora_progressive, seed=seed)
        t1 = time.perf_counter()
        base = one_shot_prune(vit, plan, d.x_train, d.y_train, a.period + a.recovery, lr=1e-3,
                              seed=seed)
        t2 = time.perf_counter()
        # the one-shot model before any fine-tuning (no training at all)
        raw = one_shot_prune(vit, plan, d.x_train, d.y_train, 0)
        row = {"reduction": red, "params": rep.params, "dense_params": rep.dense_params,
               "params_ratio": rep.params_ratio, "n_removed": rep.n_removed,
               "n_protected": rep.n_protected, "allocation": rep.allocation,
               "progressive_acc": accuracy(pr, d.x_test, d.y_test),
               "one_shot_acc": accuracy(base, d.x_test, d.y_test),
               "no_finetune_acc": accuracy(raw, d.x_test, d.y_test),
               "removed_norm_last": rep.removed_norm_last,
               "progressive_s": t1 - t, "one_shot_s": t2 - t1}
        out["loreshear"].append(row)
        print(f"  loreshear reduction {red}: params {rep.params}/{rep.dense_params}; progressive "
              f"{row['progressive_acc']:.4f}, one-shot+ft {row['one_shot_acc']:.4f}, "
              f"one-shot raw {row['no_finetune_acc']:.4f}")
    return out


def summarize(runs: list[dict]) -> None:
    def mean(v):
        return float(np.mean(v))

    print(f"\nmean over {len(runs)} seed(s); dense test acc {mean([r['dense_acc'] for r in runs]):.4f},"
          f" {runs[0]['dense_params']} params")
    print("\nCompresso gates (LoRA r=8 on q,v): sparsity reached, distance from target, test acc"
          " (direct / after fine-tuning)")
    print("| target | E[s] at end | own rounding: s | dist | acc | acc ft | exact: s | dist | "
          "acc | acc ft | gap |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, row in enumerate(runs[0]["compresso"]):
        rs = [r["compresso"][i] for r in runs]
        cells = [f"{row['target']:.0%}", f"{mean([x['expected_sparsity_end'] for x in rs]):.4f}"]
        for n in ("own_rounding", "exact"):
            cells += [f"{mean([x[n]['sparsity'] for x in rs]):.4f}",
                      f"{mean([x[n]['distance_from_target'] for x in rs]):+.4f}",
                      f"{mean([x[n]['accuracy'] for x in rs]):.4f}",
                      f"{mean([x[n]['accuracy_finetuned'] for x in rs]):.4f}"]
        cells.append(f"{max(x['exact_proof']['gap'] for x in rs):.1e}")
        print("| " + " | ".join(cells) + " |")
    print("\nLoRAShear-style progressive vs one-shot + the same fine-tuning steps")
    print("| reduction | params kept | progressive | one-shot + ft | one-shot, no ft |")
    print("|---|---|---|---|---|")
    for i, row in enumerate(runs[0]["loreshear"]):
        rs = [r["loreshear"][i] for r in runs]
        print(f"| {row['reduction']:.0%} | {mean([x['params_ratio'] for x in rs]):.4f} | "
              f"{mean([x['progressive_acc'] for x in rs]):.4f} | "
              f"{mean([x['one_shot_acc'] for x in rs]):.4f} | "
              f"{mean([x['no_finetune_acc'] for x in rs]):.4f} |")


if __name__ == "__main__":
    main()
