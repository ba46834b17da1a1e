"""The main job (``optprune demo``, what ``make demo`` runs).

On scikit-learn's digits: train an MLP and a small ViT, score their structures with
several criteria, choose exactly which to keep under a parameter budget, a FLOPs cap
and width multiples, prune physically, fine-tune briefly, and compare with the
baseline selection rules on the same constraints. Writes ``report.json`` and
``accuracy_vs_params.png`` to the output folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import OptpruneError
from ..solve.model import write_json_atomic
from .models import MLP, ViT
from .pruning import prune
from .structures import discover
from .train import accuracy, load_digits_split, train

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    budget: float = 0.5
    flops: float = 0.6
    mlp_hidden: tuple[int, ...] = (128, 128)
    vit_dim: int = 32
    vit_heads: tuple[int, ...] = (4, 4, 4)
    vit_ffn: int = 64
    epochs_mlp: int = 30
    epochs_vit: int = 40
    finetune_epochs: int = 4
    n_calib: int = 256
    criteria: tuple[str, ...] = ("magnitude", "taylor", "wanda", "flap")
    seed: int = 0

    @classmethod
    def tiny(cls) -> "DemoConfig":
        return cls(mlp_hidden=(32, 32), vit_dim=16, vit_heads=(4, 4), vit_ffn=64, epochs_mlp=3,
                   epochs_vit=2, finetune_epochs=1, n_calib=64, criteria=("magnitude", "flap"))


def _rows_for(kind: str, model: torch.nn.Module, data, cfg: DemoConfig, multiples: dict,
              log) -> list[dict[str, Any]]:
    xtr, ytr, xte, yte = data
    g = torch.Generator().manual_seed(cfg.seed)
    calib_idx = torch.randperm(xtr.shape[0], generator=g)[:cfg.n_calib]
    calib = (xtr[calib_idx], ytr[calib_idx])
    shape = tuple(xtr.shape[1:])
    dense_acc = accuracy(model, xte, yte)
    ss = discover(model, shape)
    rows = [{"model": kind, "method": "dense", "selection": "-", "params": ss.dense_params,
             "flops": ss.dense_flops, "acc_pruned": dense_acc, "acc_finetuned": dense_acc,
             "status": "-", "gap": None, "time_s": 0.0, "violations": []}]
    for r in rows:
        log(_fmt(r))
    # An exact maximizer of summed scores trusts their units across heads and channels:
    # FLAP's fluctuation enters summed over a group's channels (the expected squared
    # change of the output, one unit for heads and channels), Taylor is a loss change;
    # magnitude and Wanda enter as they are.
    plan: list[tuple[str, Any, dict, str]] = []
    for c in cfg.criteria:
        plan.append((c, c, {"aggregate": "sum"} if c == "flap" else {}, "exact"))
    plan += [("magnitude", "magnitude", {}, "uniform"),
             ("magnitude", "magnitude", {}, "topk_rounded"),
             ("flap", "flap", {"standardize": True}, "score_fill")]
    for crit, imp, kw, selection in plan:
        t0 = time.perf_counter()
        try:
            pruned, rep = prune(model, imp, cfg.budget, structures=ss, data=calib,
                                flops=cfg.flops, multiples=multiples, selection=selection,
                                strict=False, baselines=False, importance_kw=kw)
        except OptpruneError as exc:  # a rule that cannot produce a runnable model
            row = {"model": kind, "method": crit, "selection": selection, "params": None,
                   "flops": None, "acc_pruned": None, "acc_finetuned": None,
                   "status": "no model", "gap": None, "time_s": time.perf_counter() - t0,
                   "violations": [str(exc)]}
            rows.append(row)
            log(_fmt(row) + f"  ({exc})")
            continue
        t_prune = time.perf_counter() - t0
        acc0 = accuracy(pruned, xte, yte)
        train(pruned, xtr, ytr, epochs=cfg.finetune_epochs, lr=1e-3, seed=cfg.seed)
        acc1 = accuracy(pruned, xte, yte)
        a = rep.allocation
        row = {"model": kind, "method": crit, "selection": selection,
               "params": rep.after["params"], "flops": rep.after["flops"],
               "acc_pruned": acc0, "acc_finetuned": acc1,
               "status": a["termination"] if a else ("feasible" if not rep.violations
                                                     else "breaks constraints"),
               "gap": a["gap"] if a else None, "bound": a["bound"] if a else None,
               "objective": a["objective"] if a else None,
               "time_s": t_prune, "violations": rep.violations[:3]}
        rows.append(row)
        log(_fmt(row))
    return rows


def _fmt(r: dict[str, Any]) -> str:
    gap = "-" if r["gap"] is None else f"{r['gap']:.0e}"

    def num(v: Any, w: int) -> str:
        return f"{'-':>{w}}" if v is None else f"{v:>{w},}"

    def pct(v: Any) -> str:
        return f"{'-':>7}" if v is None else f"{100 * v:6.1f}%"

    return (f"{r['model']:<4} {r['method']:<10} {r['selection']:<13} {num(r['params'], 8)} "
            f"{num(r['flops'], 10)} {pct(r['acc_pruned'])} {pct(r['acc_finetuned'])}  "
            f"{r['status']:<18} {gap:>6} {r['time_s']:6.2f}s")


HEADER = (f"{'model':<4} {'method':<10} {'selection':<13} {'params':>8} {'MACs':>10} "
          f"{'pruned':>7} {'tuned':>7}  {'status':<18} {'gap':>6} {'time':>7}")


def run_demo(out_dir: str | Path = "optprune-demo", cfg: DemoConfig | None = None,
             log=print) -> dict[str, Any]:
    cfg = cfg or DemoConfig()
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    d = load_digits_split(seed=cfg.seed)
    log(f"digits: {d.x_train.shape[0]} train / {d.x_test.shape[0]} test images; budget "
        f"{cfg.budget:.0%} of parameters, MACs at most {cfg.flops:.0%}, exact allocation "
        "with HiGHS beside the baseline rules")
    rows: list[dict[str, Any]] = []

    mlp = MLP(64, list(cfg.mlp_hidden), 10)
    flat = d.flat()
    train(mlp, flat.x_train, flat.y_train, epochs=cfg.epochs_mlp, seed=cfg.seed,
          progress="train MLP")
    log(HEADER)
    rows += _rows_for("mlp", mlp, (flat.x_train, flat.y_train, flat.x_test, flat.y_test), cfg,
                      {"neuron": 8}, log)
    vit = ViT(image_size=8, patch=2, dim=cfg.vit_dim, heads=cfg.vit_heads,
              head_dim=cfg.vit_dim // max(cfg.vit_heads), ffn=cfg.vit_ffn)
    train(vit, d.x_train, d.y_train, epochs=cfg.epochs_vit, lr=2e-3, seed=cfg.seed,
          progress="train ViT")
    rows += _rows_for("vit", vit, (d.x_train, d.y_train, d.x_test, d.y_test), cfg,
                      {"ffn": 8}, log)
    total = time.perf_counter() - t_start
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": cfg.__dict__, "rows": rows, "total_time_s": total,
              "torch_threads": torch.get_num_threads()}
    write_json_atomic(out / "report.json", report)
    _plot(rows, out / "accuracy_vs_params.png")
    log(f"wrote {out / 'report.json'} and {out / 'accuracy_vs_params.png'} "
        f"({total:.1f} s in all)")
    return report


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, ("mlp", "vit")):
        rs = [r for r in rows if r["model"] == kind]
        for r in rs:
            if r["params"] is None:
                continue
            exact = r["selection"] == "exact"
            marker = "*" if r["method"] == "dense" else ("o" if exact else "s")
            label = "dense" if r["method"] == "dense" else f"{r['method']} / {r['selection']}"
            ax.scatter(r["params"], 100 * r["acc_finetuned"], marker=marker, s=60,
                       label=label, alpha=0.85)
        ax.set_title(f"digits {kind.upper()}: accuracy after fine-tuning")
        ax.set_xlabel("parameters")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


