"""The main job (``optprune demo``, what ``make demo`` runs).

On scikit-learn's digits: train an MLP and a small ViT, then prune each to a parameter
budget, a MACs cap and width multiples with ``optprune.prune``'s default pipeline
(loss-calibrated objective, exact search, reconstruction) and with the rules people
use on the same constraints: the uniform rule, a global threshold with rounding
(Torch-Pruning's global pruning), FLAP's fill, and the exact maximizer of summed
magnitude (an exact optimum of a proxy). Every selection is reported as it comes
(one-shot), with the same reconstruction given to it, and after identical
fine-tuning. A rule that breaks a constraint is marked and not plotted as a result.
Writes ``report.json`` and ``accuracy_vs_params.png`` to the output folder.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import OptpruneError
from ..experiments.recipes import DIGITS_VIT, VIT_EPOCHS, VIT_LR
from ..solve.model import write_json_atomic
from .models import MLP, ViT
from .pipeline import CalibrationOptions
from .pruning import prune
from .reconstruct import reconstruct
from .structures import discover
from .surgery import apply_mask
from .train import accuracy, load_digits_split, train

__all__ = ["DemoConfig", "run_demo", "METHODS"]

# (label, importance, importance options, selection): the default pipeline first.
METHODS: tuple[tuple[str, str, dict, str], ...] = (
    ("optprune default", "calibrated", {}, "exact"),
    ("uniform", "magnitude", {}, "uniform"),
    ("global threshold", "magnitude", {}, "topk_rounded"),
    ("FLAP fill", "flap", {"standardize": True}, "score_fill"),
    ("exact sum of magnitudes", "magnitude", {}, "exact"),
)
COLORS = {"dense": "black", "optprune default": "tab:red", "uniform": "tab:blue",
          "global threshold": "tab:green", "FLAP fill": "tab:purple",
          "exact sum of magnitudes": "tab:orange"}


@dataclass(frozen=True)
class DemoConfig:
    budget: float = 0.5
    flops: float = 0.6
    mlp_hidden: tuple[int, ...] = (128, 128)
    vit_dim: int = DIGITS_VIT["dim"]
    vit_heads: tuple[int, ...] = DIGITS_VIT["heads"]
    vit_ffn: int = DIGITS_VIT["ffn"]
    epochs_mlp: int = 30
    epochs_vit: int = VIT_EPOCHS
    finetune_epochs: int = 4
    n_calib: int = 512
    k_best: int = 2
    seed: int = 0

    @classmethod
    def tiny(cls) -> "DemoConfig":
        return cls(mlp_hidden=(32, 32), vit_dim=16, vit_heads=(4, 4), vit_ffn=64, epochs_mlp=3,
                   epochs_vit=2, finetune_epochs=1, n_calib=128, k_best=2)


def demo_vit(cfg: DemoConfig) -> ViT:
    """The demo's untrained ViT: with the default config, the kit's digits ViT
    (``optprune.experiments.digits_vit(cfg.seed)``: same shape, same initialization),
    so the demo's ViT is the one every ViT benchmark starts from."""
    shape = dict(DIGITS_VIT, dim=cfg.vit_dim, heads=tuple(cfg.vit_heads),
                 head_dim=cfg.vit_dim // max(cfg.vit_heads), ffn=cfg.vit_ffn)
    torch.manual_seed(cfg.seed)
    return ViT(**shape)


def _rows_for(kind: str, model: torch.nn.Module, data, cfg: DemoConfig, multiples: dict,
              log) -> list[dict[str, Any]]:
    xtr, ytr, xte, yte = data
    g = torch.Generator().manual_seed(cfg.seed)
    calib_idx = torch.randperm(xtr.shape[0], generator=g)[:cfg.n_calib]
    calib = (xtr[calib_idx], ytr[calib_idx])
    shape = tuple(xtr.shape[1:])
    dense_acc = accuracy(model, xte, yte)
    ss = discover(model, shape)
    rows: list[dict[str, Any]] = [
        {"model": kind, "method": "dense", "selection": "-", "params": ss.dense_params,
         "flops": ss.dense_flops, "acc_pruned": dense_acc, "acc_reconstructed": dense_acc,
         "acc_finetuned": dense_acc, "status": "-", "gap": None, "time_s": 0.0,
         "violations": [], "feasible": True}]
    log(_fmt(rows[0]))
    opts = CalibrationOptions(k_best=cfg.k_best, seed=cfg.seed)
    for label, imp, kw, selection in METHODS:
        t0 = time.perf_counter()
        try:
            pruned, rep = prune(model, imp, cfg.budget, structures=ss, data=calib,
                                flops=cfg.flops, multiples=multiples, selection=selection,
                                strict=False, baselines=False, importance_kw=kw,
                                calibration=opts)
        except OptpruneError as exc:  # a rule that cannot produce a runnable model
            row = {"model": kind, "method": label, "selection": selection, "params": None,
                   "flops": None, "acc_pruned": None, "acc_reconstructed": None,
                   "acc_finetuned": None, "status": "no model", "gap": None,
                   "time_s": time.perf_counter() - t0, "violations": [str(exc)],
                   "feasible": False}
            rows.append(row)
            log(_fmt(row) + f"  ({exc})")
            continue
        t_prune = time.perf_counter() - t0
        keep = np.isin(ss.ids, rep.kept_ids)
        acc0 = accuracy(pruned, xte, yte)
        if rep.reconstructed:
            acc_rec = acc0
        else:  # the same reconstruction, given to the rule's selection
            work = dataclasses.replace(ss, model=copy.deepcopy(model))
            reconstruct(work, keep, calib)  # the pipeline's reconstruction, for every rule
            acc_rec = accuracy(apply_mask(work, keep, inplace=True), xte, yte)
        train(pruned, xtr, ytr, epochs=cfg.finetune_epochs, lr=1e-3, seed=cfg.seed)
        acc1 = accuracy(pruned, xte, yte)
        a = rep.allocation
        row = {"model": kind, "method": label, "selection": selection,
               "params": rep.after["params"], "flops": rep.after["flops"],
               "acc_pruned": acc0, "acc_reconstructed": acc_rec, "acc_finetuned": acc1,
               "status": a["termination"] if a else ("feasible" if not rep.violations
                                                     else "breaks constraints"),
               "gap": a["gap"] if a else None, "bound": a["bound"] if a else None,
               "objective": a["objective"] if a else None,
               "time_s": t_prune, "violations": rep.violations[:3],
               "feasible": not rep.violations}
        rows.append(row)
        log(_fmt(row))
    return rows


def _fmt(r: dict[str, Any]) -> str:
    gap = "-" if r["gap"] is None else f"{r['gap']:.0e}"

    def num(v: Any, w: int) -> str:
        return f"{'-':>{w}}" if v is None else f"{v:>{w},}"

    def pct(v: Any) -> str:
        return f"{'-':>7}" if v is None else f"{100 * v:6.1f}%"

    return (f"{r['model']:<4} {r['method']:<24} {num(r['params'], 8)} "
            f"{num(r['flops'], 10)} {pct(r['acc_pruned'])} {pct(r['acc_reconstructed'])} "
            f"{pct(r['acc_finetuned'])}  {r['status']:<18} {gap:>6} {r['time_s']:6.2f}s")


HEADER = (f"{'model':<4} {'method':<24} {'params':>8} {'MACs':>10} "
          f"{'pruned':>7} {'+recon':>7} {'tuned':>7}  {'status':<18} {'gap':>6} {'time':>7}")


def run_demo(out_dir: str | Path = "optprune-demo", cfg: DemoConfig | None = None,
             log=print) -> dict[str, Any]:
    cfg = cfg or DemoConfig()
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    d = load_digits_split(seed=cfg.seed)
    log(f"digits: {d.x_train.shape[0]} train / {d.x_test.shape[0]} test images; budget "
        f"{cfg.budget:.0%} of parameters, MACs at most {cfg.flops:.0%}. 'pruned' is each "
        "rule's model as it comes (the default pipeline includes its reconstruction), "
        "'+recon' the same selection with the same reconstruction, 'tuned' the 'pruned' "
        f"model after {cfg.finetune_epochs} identical fine-tuning epochs.")
    rows: list[dict[str, Any]] = []

    mlp = MLP(64, list(cfg.mlp_hidden), 10)
    flat = d.flat()
    train(mlp, flat.x_train, flat.y_train, epochs=cfg.epochs_mlp, seed=cfg.seed,
          progress="train MLP")
    log(HEADER)
    rows += _rows_for("mlp", mlp, (flat.x_train, flat.y_train, flat.x_test, flat.y_test), cfg,
                      {"neuron": 8}, log)
    vit = demo_vit(cfg)
    train(vit, d.x_train, d.y_train, epochs=cfg.epochs_vit, lr=VIT_LR, seed=cfg.seed,
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

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, kind in zip(axes, ("mlp", "vit")):
        for r in (r for r in rows if r["model"] == kind and r["params"] is not None):
            color = COLORS.get(r["method"], "gray")
            if not r["feasible"]:  # broken constraints: marked, not a result
                ax.scatter(r["params"], 100 * r["acc_finetuned"], marker="x", s=50, color=color,
                           label=f"{r['method']} (breaks constraints)", alpha=0.6)
                continue
            if r["method"] == "dense":
                ax.scatter(r["params"], 100 * r["acc_finetuned"], marker="*", s=120, color=color,
                           label="dense")
                continue
            ax.scatter(r["params"], 100 * r["acc_pruned"], marker="o", s=45, color=color,
                       facecolors="none", label=f"{r['method']} (one-shot)")
            ax.scatter(r["params"], 100 * r["acc_finetuned"], marker="o", s=45, color=color,
                       label=f"{r['method']} (fine-tuned)")
        ax.set_title(f"digits {kind.upper()}: test accuracy")
        ax.set_xlabel("parameters")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
