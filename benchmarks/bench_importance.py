"""Importance scores on the digits ViT: time per score, then allocation at 40% fewer
parameters, heterogeneous (one MILP over all heads and FFN channels) vs uniform per
layer (same MILP plus equal head counts and equal FFN widths in every block).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_importance.py [--epochs 40]
        [--seeds 0,1,2] [--keep 0.6] [--json OUT]

The model is the kit's digits ViT (``optprune.experiments.pretrained_digits_vit``: dim
32, 3 blocks x 4 heads of 8, FFN 64, the recipe's 40 epochs) on the kit's split.

Accuracy is of the masked model (dropped groups' consumer inputs zeroed, no weight
change, no fine-tuning) on the held-out digits.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40, help="pre-training epochs (recipe: 40)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--keep", type=float, default=0.6, help="kept fraction of all parameters")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    runs = [one_seed(a, int(sd)) for sd in a.seeds.split(",")]
    print("\nmean over seeds (test accuracy of the masked model, no fine-tuning):")
    print(f"{'score':42s} {'time_s':>7s} {'hetero':>7s} {'uniform':>7s}")
    print(f"{'dense':42s} {'':7s} {np.mean([r['dense_acc'] for r in runs]):7.4f}")
    for i, row in enumerate(runs[0]["rows"]):
        t = np.mean([r["rows"][i]["time_s"] for r in runs])
        h = np.mean([r["rows"][i]["heterogeneous"]["acc"] for r in runs])
        u = np.mean([r["rows"][i]["uniform"]["acc"] for r in runs])
        print(f"{row['score']:42s} {t:7.3f} {h:7.4f} {u:7.4f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)


def one_seed(a, seed: int) -> dict:
    from optprune.alloc import AllocationProblem, allocate
    from optprune.experiments import accuracy, pretrained_digits_vit
    from optprune.nn import discover
    from optprune.nn.importance import score

    # The kit's digits ViT, trained by its recipe on the kit's split of this seed.
    vit = pretrained_digits_vit(epochs=a.epochs, seed=seed)
    model, d, train_s = vit.model, vit.data, vit.pretrain_s

    def acc(m) -> float:
        return accuracy(m, d.x_test, d.y_test)

    ss = discover(model, (1, 8, 8))
    calib = (d.x_train[:256], d.y_train[:256])
    dense = acc(model)
    print(f"seed {seed}: trained {a.epochs} epochs in {train_s:.1f} s; dense test accuracy {dense:.4f}; "
          f"{len(ss.groups)} groups, {ss.dense_params} params ({ss.fixed_params} fixed)")
    crits = [("magnitude", {}), ("taylor", {}), ("wanda", {}), ("flap", {}),
             ("snip", {}), ("grasp", {}), ("synflow", {}),
             ("synflow", {"iterations": 5, "keep_fraction": 0.5}),
             ("bonsai", {"n_submodels": 64, "drop_fraction": 0.2}),
             ("gohsp", {}), ("gohsp", {"similarity": "kl"}), ("fisher", {}), ("random", {})]
    rows = []
    for name, kw in crits:
        t0 = time.perf_counter()
        s = score(ss, name, calib, **kw)
        dt = time.perf_counter() - t0
        label = name + ("" if not kw else "(" + ",".join(f"{k}={v}" for k, v in kw.items()) + ")")
        res = {"score": label, "time_s": dt}
        for mode in ("heterogeneous", "uniform"):
            p = AllocationProblem(ss.ids, ss.layers, ss.kinds, s,
                                  {"params": ss.costs()["params"]},
                                  fixed_costs={"params": float(ss.fixed_params)}, name=label)
            p.add_budget("params", max=a.keep, relative=True)
            if mode == "uniform":
                for kind in ("head", "ffn"):
                    p.add_equal_counts([sl for sl in p.slots() if sl[1] == kind])
            r = allocate(p, time_limit_s=30, baselines=False)
            keep = np.asarray(r.keep, dtype=bool)
            pred = ss.predict(keep)
            with ss.masked(keep) as m:
                ac = acc(m)
            counts = {k: [int(keep[ix].sum()) for (ly, kd), ix in ss.layer_kind_index().items()
                          if kd == k] for k in ("head", "ffn")}
            res[mode] = {"acc": ac, "params": pred["params"],
                         "params_frac": pred["params"] / ss.dense_params,
                         "heads": counts["head"], "ffn": counts["ffn"],
                         "gap": r.solve.gap, "solve_s": r.total_time_s}
        rows.append(res)
        h, u = res["heterogeneous"], res["uniform"]
        print(f"{label:42s} {dt:7.3f} s | hetero acc {h['acc']:.4f} heads {h['heads']} ffn "
              f"{h['ffn']} ({h['params_frac']:.3f}) | uniform acc {u['acc']:.4f} heads "
              f"{u['heads']} ffn {u['ffn']} ({u['params_frac']:.3f})")
    return {"seed": seed, "dense_acc": dense, "train_s": train_s, "rows": rows}


if __name__ == "__main__":
    main()
