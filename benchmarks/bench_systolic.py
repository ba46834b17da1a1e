"""Systolic-array latency model, tile-aligned allocation and SASP, measured side by side.

    python benchmarks/bench_systolic.py [--part model,shape,plan,sasp] [--epochs 40]
        [--arrays 4,8,16,32] [--rates 0,0.1,0.2,0.3,0.4,0.5] [--finetune-epochs 3]
        [--seeds 0,1,2] [--json OUT]

* model: the closed-form cycle model against the cycle-stepped reference simulator
  (equal cycles asserted on every shape) and against SCALE-Sim when it is installed;
  time per GEMM and the speed ratio.
* shape: SASP's cycle speedup at the published speech-transformer shape (no accuracy).
The model is the digits ViT of optprune.experiments (the one recipe and split of every
digits section of BENCHMARKS.md).

* plan: tile-aligned allocation of heads and FFN channels of the digits ViT under
  cycle caps, exact vs the allocation engine's baselines: retained importance,
  predicted cycles and test accuracy of the masked model (no fine-tuning).
* sasp: SASP tile pruning of the same ViT for arrays 4..32 at tile pruning rates
  0-50 %, exact vs magnitude threshold: system-wide speedup and test accuracy, before
  and after a short masked fine-tune.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch

from optprune.experiments import VIT_EPOCHS
from optprune.experiments.jsonio import write_json_atomic

torch.set_num_threads(1)


def part_model(reps: int = 3) -> dict:
    from optprune.hw.refsim import simulate_gemm
    from optprune.hw.systolic import gemm_cost

    rng = np.random.default_rng(0)
    shapes = [(17, 64, 64), (17, 64, 128), (34, 128, 64), (9, 20, 30), (64, 32, 48)]
    arrays = [(4, 4), (8, 8), (16, 16), (8, 4)]
    rows, t_formula, t_sim = [], 0.0, 0.0
    for d in ("os", "ws", "is"):
        for (M, K, N) in shapes:
            for R, C in arrays:
                A, B = rng.standard_normal((M, K)), rng.standard_normal((K, N))
                t0 = time.perf_counter()
                for _ in range(reps):
                    c = gemm_cost(M, K, N, (R, C), d)
                t1 = time.perf_counter()
                s = simulate_gemm(A, B, R, C, d)
                t2 = time.perf_counter()
                assert s.cycles == c.cycles and s.sram_reads == c.sram_reads, (M, K, N, R, C, d)
                assert s.sram_writes == c.sram_writes and np.allclose(s.output, A @ B)
                t_formula += (t1 - t0) / reps
                t_sim += t2 - t1
                rows.append({"dataflow": d, "gemm": [M, K, N], "array": f"{R}x{C}",
                             "cycles": c.cycles})
    out = {"n_gemms": len(rows), "all_equal": True, "formula_s_per_gemm": t_formula / len(rows),
           "refsim_s_per_gemm": t_sim / len(rows), "speed_ratio": t_sim / t_formula}
    try:
        import scalesim  # noqa: F401
        from optprune.hw.scalesim_bridge import scalesim_cycles
        from optprune.hw.systolic import gemm_cycles

        t0 = time.perf_counter()
        checks = [(M, K, N, d, scalesim_cycles(M, K, N, 8, 8, d), gemm_cycles(M, K, N, "8x8", d))
                  for (M, K, N) in shapes[:3] for d in ("os", "ws", "is")]
        out["scalesim"] = {"checks": checks, "equal_up_to_1": all(a == b - 1 for *_, a, b in checks),
                           "s_per_gemm": (time.perf_counter() - t0) / len(checks)}
    except ImportError:
        out["scalesim"] = "not installed (PyPI scalesim needs numpy < 2.4; not run)"
    print(f"[model] {len(rows)} GEMM runs ({len(shapes)} shapes x {len(arrays)} arrays x 3 dataflows): "
          f"formula == cycle-stepped simulation on every "
          f"one (cycles, SRAM reads and writes, product)")
    print(f"        formula {out['formula_s_per_gemm'] * 1e6:.1f} us/GEMM, simulation "
          f"{out['refsim_s_per_gemm'] * 1e3:.1f} ms/GEMM: formula {out['speed_ratio']:.0f}x faster")
    print(f"        SCALE-Sim: {out['scalesim'] if isinstance(out['scalesim'], str) else 'see json'}")
    return out


def part_shape(arrays, rates) -> list:
    """System-wide speedup of SASP tile pruning at the published speech-transformer
    shape (d_model 512, 4 heads of 128, FFN 2048, sequence 128, batch 1): cycles only,
    every block alike, attention products dense."""
    from optprune.hw.mapping import transformer_block_gemms

    gemms = transformer_block_gemms("enc", 512, 4, 128, 2048, seq_len=128)
    out = []
    print("[shape] SASP speedup at the published shape (d 512, 4 heads, FFN 2048, T 128; "
          "ws; uniform tile rate over QKV/proj/FFN):")
    print("  array " + " ".join(f"{r:>6.0%}" for r in rates) + "  dense-attention share")
    for a in arrays:
        fixed = sum(g.cycles(a, "ws") for g in gemms if g.role != "linear")
        lin = [g for g in gemms if g.role == "linear"]
        per_tile = 2 * a + a + 128 - 2
        tiles = sum(-(-g.K // a) * -(-g.N // a) for g in lin)
        assert tiles * per_tile == sum(g.cycles(a, "ws") for g in lin)
        dense = fixed + tiles * per_tile
        sp = []
        for r in rates:
            kept = tiles - int(np.ceil(r * tiles - 1e-9))
            sp.append(dense / (fixed + kept * per_tile))
        out.append({"array": a, "rates": rates, "speedup": sp, "attention_share": fixed / dense})
        print(f"  {a:>2}x{a:<2} " + " ".join(f"{v:6.3f}" for v in sp) + f"  {fixed / dense:.3f}")
    return out


def _trained(epochs: int, seed: int = 0):
    from optprune.experiments import pretrained_digits_vit

    dv = pretrained_digits_vit(epochs, seed=seed)
    print(f"[seed {seed}] digits ViT (dim 32, heads (4, 4, 4) x 8, FFN 64, 17 tokens); trained "
          f"{epochs} epochs in {dv.pretrain_s:.1f} s; test accuracy {dv.test_accuracy:.4f}")
    return dv


def part_plan(dv, arrays, caps=(0.5, 0.6, 0.7, 0.8, 0.9)) -> list:
    from optprune.experiments import DIGITS_SHAPE, accuracy
    from optprune.hw.plan import plan_allocation
    from optprune.nn.importance import score
    from optprune.nn.structures import discover

    s = discover(dv.model, DIGITS_SHAPE)
    sc = score(s, "taylor", (dv.data.x_train, dv.data.y_train))

    def acc(keep):
        with s.masked(keep) as m:
            return accuracy(m, dv.data.x_test, dv.data.y_test)

    out = []
    print("[plan] max Taylor importance s.t. model cycles <= cap x dense (ws); accuracy of the "
          "masked model, no fine-tuning")
    print(f"  {'array':>5} {'cap':>4} {'speedup':>7} {'kept imp':>8} {'acc':>6} | best baseline "
          f"{'kept imp':>8} {'acc':>6} | price")
    for a in arrays:
        for cap in caps:
            r = plan_allocation(s, sc, f"{a}x{a}", "ws", latency_cap=cap)
            feas = {k: v for k, v in r.baselines.items() if v["feasible"]}
            best = max(feas, key=lambda k: feas[k]["retained_importance"]) if feas else None
            row = {"array": a, "cap": cap, "termination": r.termination, "gap": r.gap,
                   "speedup": r.speedup, "cycles": r.cycles, "dense_cycles": r.dense_cycles,
                   "retained": r.retained_importance / r.total_importance, "acc": acc(r.keep),
                   "solve_s": r.solve_time_s, "widths": {x["layer"]: x["kept"] for x in r.layers}}
            if best:
                row.update(baseline=best, baseline_retained=feas[best]["retained_importance"]
                           / r.total_importance, baseline_acc=acc(r.baseline_keep[best]),
                           baseline_speedup=r.dense_cycles / feas[best]["cycles"])
            out.append(row)
            b = (f"{best:>13} {row['baseline_retained']:8.4f} {row['baseline_acc']:6.4f}"
                 if best else f"{'none feasible':>13} {'':8} {'':6}")
            price = (row["retained"] - row.get("baseline_retained", np.nan)) / row["retained"]
            print(f"  {a:>5} {cap:>4} {r.speedup:7.3f} {row['retained']:8.4f} {row['acc']:6.4f} | "
                  f"{b} | {price:.4f}")
    return out


def part_sasp(dv, arrays, rates, ft_epochs, max_rate=0.75, seed=0) -> list:
    from optprune.errors import InfeasibleProblemError
    from optprune.experiments import DIGITS_SHAPE, accuracy
    from optprune.hw.tiles import (MATRIX_KINDS, apply_tile_masks, block_mask, finetune_masked,
                                   sasp_prune, tile_grids, tile_importance)

    model = dv.model
    Xtr, ytr, Xte, yte = dv.data.as_tuple()
    base_acc = accuracy(model, Xte, yte)
    ft_dense = finetune_masked(copy.deepcopy(model), {}, Xtr, ytr, ft_epochs, seed=1)
    base_ft = accuracy(ft_dense, Xte, yte)
    print(f"[sasp] tiles = array size, Frobenius^2 normalized per matrix, per-matrix max rate "
          f"{max_rate}; dense acc {base_acc:.4f} ({base_ft:.4f} after {ft_epochs} more epochs)")
    print(f"  {'array':>5} {'rate':>4} {'method':>9} {'tiles':>9} {'speedup':>7} {'acc':>6} "
          f"{'acc ft':>6} {'same as exact':>13}")
    out = []
    bounds = {k: max_rate for k in MATRIX_KINDS}
    for a in arrays:
        grids, dense = tile_grids(model, DIGITS_SHAPE, f"{a}x{a}")
        sc = tile_importance(model, grids, "frobenius", normalize="matrix")
        exact_keep = None
        for rate in rates:
            for method in ("exact", "threshold"):
                try:
                    r = sasp_prune(grids, dense, sc, prune_rate=rate, method=method,
                                   max_rate=bounds)
                except InfeasibleProblemError:  # fewer tiles per matrix than the rate needs
                    out.append({"seed": seed, "array": a, "rate": rate, "method": method,
                                "infeasible": True})
                    print(f"  {a:>5} {rate:>4} {method:>9} infeasible: at most {max_rate} of "
                          "each matrix's tiles may go")
                    break
                same = exact_keep is not None and all(
                    np.array_equal(r.keep[g.module], exact_keep[g.module]) for g in grids)
                if method == "exact":
                    exact_keep = r.keep
                pm = apply_tile_masks(model, grids, r.keep)
                acc0 = accuracy(pm, Xte, yte)
                if same:
                    acc_ft = out[-1]["acc_ft"]
                else:
                    masks = {g.module: block_mask(g, r.keep[g.module]) for g in grids}
                    acc_ft = accuracy(finetune_masked(pm, masks, Xtr, ytr, ft_epochs, seed=1),
                                      Xte, yte)
                row = {"seed": seed, "array": a, "rate": rate, "method": method,
                       "kept_tiles": r.kept_tiles, "n_tiles": r.n_tiles,
                       "prune_rate": r.prune_rate, "speedup": r.speedup,
                       "cycles": r.cycles, "dense_cycles": r.dense_cycles, "acc": acc0,
                       "acc_ft": acc_ft, "retained": r.retained_importance / r.total_importance,
                       "same_as_exact": same if method == "threshold" else None,
                       "infeasible": False}
                out.append(row)
                print(f"  {a:>5} {rate:>4} {method:>9} {r.kept_tiles:>4}/{r.n_tiles:<4} "
                      f"{r.speedup:7.3f} {acc0:6.4f} {acc_ft:6.4f} "
                      f"{'' if method == 'exact' else str(same):>13}")
    for r in out:
        r["dense_acc"], r["dense_acc_ft"] = base_acc, base_ft
    ref = max(base_acc, base_ft)
    print(f"  largest tile pruning rate within 1 point of the dense accuracy {ref:.4f} (exact, "
          "fine-tuned):")
    for a in arrays:
        ok = [r for r in out if r["array"] == a and r["method"] == "exact"
              and not r["infeasible"] and r["acc_ft"] >= ref - 0.01]
        best = max(ok, key=lambda r: r["rate"]) if ok else None
        if best:
            print(f"    {a:>2}x{a:<2}: rate {best['rate']:.1f}, speedup {best['speedup']:.3f}, "
                  f"acc {best['acc_ft']:.4f}")
        else:
            print(f"    {a:>2}x{a:<2}: none")
    return out


def _sasp_summary(rows, arrays, rates) -> None:
    """Mean over seeds of the accuracy drop (points) of the exact tile pruning."""
    print("[sasp, mean over seeds] accuracy drop in points vs the better dense accuracy "
          "(no fine-tune / after fine-tune), and speedup")
    print("  array " + " ".join(f"{r:>15.0%}" for r in rates))
    for a in arrays:
        cells = []
        for r in rates:
            sel = [x for x in rows if x["array"] == a and x["rate"] == r and x["method"] == "exact"]
            if any(x["infeasible"] for x in sel):
                cells.append("infeasible")
                continue
            d0 = np.mean([100 * (max(x["dense_acc"], x["dense_acc_ft"]) - x["acc"]) for x in sel])
            d1 = np.mean([100 * (max(x["dense_acc"], x["dense_acc_ft"]) - x["acc_ft"]) for x in sel])
            cells.append(f"{d0:5.1f}/{d1:4.1f} x{sel[0]['speedup']:.2f}")
        print(f"  {a:>2}x{a:<2} " + " ".join(f"{c:>15}" for c in cells))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", default="model,shape,plan,sasp")
    ap.add_argument("--epochs", type=int, default=VIT_EPOCHS, help="pre-training epochs")
    ap.add_argument("--arrays", default="4,8,16,32")
    ap.add_argument("--rates", default="0,0.1,0.2,0.3,0.4,0.5")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--seeds", default="0", help="training seeds of the SASP experiment")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    parts = set(args.part.split(","))
    arrays = [int(v) for v in args.arrays.split(",")]
    rates = [float(v) for v in args.rates.split(",")]
    res: dict = {"command": "python benchmarks/bench_systolic.py " + " ".join(argv or sys.argv[1:])}
    t0 = time.perf_counter()
    if "model" in parts:
        res["model"] = part_model()
    if "shape" in parts:
        res["shape"] = part_shape(arrays, rates)
    seeds = [int(v) for v in args.seeds.split(",")]
    if parts & {"plan", "sasp"}:
        res["sasp"] = []
        for i, seed in enumerate(seeds):
            dv = _trained(args.epochs, seed)
            res.setdefault("dense_test_accuracy", []).append(dv.test_accuracy)
            if "plan" in parts and i == 0:
                res["plan"] = part_plan(dv, arrays)
            if "sasp" in parts:
                res["sasp"] += part_sasp(dv, arrays, rates, args.finetune_epochs, seed=seed)
        if "sasp" in parts and len(seeds) > 1:
            _sasp_summary(res["sasp"], arrays, rates)
    res["total_s"] = time.perf_counter() - t0
    print(f"total {res['total_s']:.1f} s")
    if args.json:
        write_json_atomic(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
