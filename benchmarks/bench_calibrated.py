"""The default pipeline against the rules people use, judged by the model it produces.

For each model family (digits MLP, residual CNN, ViT) and seed: train the dense model
(the project's recipe), then prune it to the same parameter budget with

* ``tp-magnitude`` / ``tp-taylor``: Torch-Pruning 1.6.1 global pruning (its own
  round_to; heads pruned whole on the ViT; the residual width kept, as optprune
  keeps it);
* ``uniform`` (magnitude), ``flap-fill`` (FLAP's standardized scores, filled by score),
  ``wanda-sp`` (structured Wanda scores, one ratio per layer), ``exact-magnitude``
  (summed magnitude maximized exactly: yesterday's default);
* ``kwon``: Kwon et al.'s mask search on the same Fisher saliency (transformers: for
  every global head count, the best heads and then the best FFN channels that fit;
  other models: global top-k by Fisher saliency);
* ``calibrated``: ``optprune.prune``'s default pipeline.

The budget of a comparison is the smallest parameter count any contender reached
(Torch-Pruning's ratio is bisected to land at or below the target; the optprune rules
and the pipeline then get that count), so the pipeline never gets more parameters.
Every selection is evaluated as it is (one-shot) and with the same reconstruction
(``optprune.nn.reconstruct``) and after identical fine-tuning of each (same optimizer,
steps and data order), on the digits test split and on a shifted copy of it (every
test image moved by one pixel and given Gaussian noise: data from outside the
calibration set's domain).

    .venv/bin/python benchmarks/bench_calibrated.py --families vit --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import sys
import time
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from optprune.nn import pruning  # noqa: E402
from optprune.nn.fisher import mask_fisher  # noqa: E402
from optprune.nn.models import MLP, MultiHeadAttention, SmallCNN, ViT  # noqa: E402
from optprune.nn.pipeline import CalibrationOptions  # noqa: E402
from optprune.nn.reconstruct import reconstruct  # noqa: E402
from optprune.nn.structures import StructureSet, discover  # noqa: E402
from optprune.nn.surgery import apply_mask  # noqa: E402
from optprune.nn.train import accuracy, load_digits_split, train  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Family:
    build: Callable[[], torch.nn.Module]
    flat: bool
    epochs: int
    lr: float
    multiples: dict[str, int] | None
    round_to: int | None


FAMILIES = {
    "mlp": Family(lambda: MLP(64, [128, 128], 10), True, 30, 3e-3, {"neuron": 8}, 8),
    "cnn": Family(lambda: SmallCNN(1, 16, n_blocks=2, n_classes=10), False, 30, 3e-3, None, None),
    "vit": Family(lambda: ViT(image_size=8, patch=2, dim=32, heads=(4, 4, 4), head_dim=8, ffn=64),
                  False, 40, 2e-3, {"ffn": 8}, 8),
}


def shifted(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Every image moved by one pixel (a random direction per image) plus N(0, 0.1)
    noise, clipped to [0, 1]: the digits outside the calibration set's domain."""
    g = torch.Generator().manual_seed(10_000 + seed)
    img = x.view(-1, 1, 8, 8)
    out = torch.empty_like(img)
    dirs = torch.randint(0, 4, (img.shape[0],), generator=g)
    for i, (dy, dx) in enumerate([(0, 1), (0, -1), (1, 0), (-1, 0)]):
        m = dirs == i
        out[m] = torch.roll(img[m], shifts=(dy, dx), dims=(2, 3))
    out = (out + 0.1 * torch.randn(out.shape, generator=g)).clamp(0, 1)
    return out.view_as(x)


# ----------------------------------------------------------------- Torch-Pruning
def _tp_prune(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ratio: float,
              imp: str, round_to: int | None) -> torch.nn.Module:
    import torch_pruning as tp

    m = copy.deepcopy(model)
    heads, ignored = {}, [m.head] if hasattr(m, "head") else []
    if isinstance(m, ViT):
        ignored += [m.patch_embed] + [b.attn.proj for b in m.blocks] + [b.mlp.fc2 for b in m.blocks]
        for mod in m.modules():
            if isinstance(mod, MultiHeadAttention):
                heads.update({mod.q: mod.num_heads, mod.k: mod.num_heads, mod.v: mod.num_heads})
    elif isinstance(m, MLP):
        ignored = [m[len(m) - 1]]
    elif isinstance(m, SmallCNN):
        ignored = [m.head]
    importance = (tp.importance.GroupMagnitudeImportance(p=2) if imp == "magnitude"
                  else tp.importance.GroupTaylorImportance())
    pr = tp.pruner.MetaPruner(
        m, x[:4], importance=importance, global_pruning=True, pruning_ratio=ratio,
        ignored_layers=ignored, num_heads=heads, prune_num_heads=bool(heads),
        prune_head_dims=False, head_pruning_ratio=ratio if heads else 0.0, round_to=round_to)
    if imp == "taylor":
        m.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for g in pr.step(interactive=True):
        g.prune()
    for mod in m.modules():
        if isinstance(mod, MultiHeadAttention):
            mod.num_heads = mod.q.out_features // mod.head_dim
    m.zero_grad()
    return m


def tp_select(model, ss: StructureSet, x, y, imp: str, round_to, target: float):
    """Bisect Torch-Pruning's ratio so the pruned model keeps at most ``target`` of the
    dense parameters (the largest such model); returns its keep mask in optprune's
    groups (recovered by matching the surviving rows to the dense ones)."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        m = _tp_prune(model, x, y, mid, imp, round_to)
        frac = sum(p.numel() for p in m.parameters()) / ss.dense_params
        if frac <= target:
            best, hi = m, mid
        else:
            lo = mid
    if best is None:
        raise RuntimeError(f"Torch-Pruning did not reach {target:.3f} of the parameters")
    return keep_from_pruned(ss, best), best


def keep_from_pruned(ss: StructureSet, pruned: torch.nn.Module) -> np.ndarray:
    """Which groups of ``ss`` survive in ``pruned``: a group is kept when its first
    parameter slice (e.g. a row of fc1, the q rows of a head) is found unchanged. A
    one-dimensional slice (a bias, a norm's scale) is preferred: a row of a layer whose
    inputs were pruned too has lost entries and no longer matches its dense row."""
    dense = dict(ss.model.named_parameters())
    small = dict(pruned.named_parameters())
    keep = np.zeros(len(ss.groups), dtype=bool)
    cache: dict[tuple[str, int], set] = {}
    for i, g in enumerate(ss.groups):
        own = [s for s in g.slices if s[0] in dense]
        name, dim, idx = next((s for s in own if dense[s[0]].dim() == 1), own[0])
        key = (name, dim)
        if key not in cache:
            t = small[name].detach().movedim(dim, 0)
            cache[key] = {t[j].numpy().tobytes() for j in range(t.shape[0])}
        rows = dense[name].detach().movedim(dim, 0)[list(idx)]
        keep[i] = all(r.numpy().tobytes() in cache[key] for r in rows)
    return keep


# ----------------------------------------------------------------- Kwon et al.
def kwon_label(ss: StructureSet) -> str:
    return "kwon" if "head" in set(ss.kinds) else "fisher-greedy"


def kwon_select(ss: StructureSet, problem, saliency: np.ndarray) -> np.ndarray:
    """Kwon et al.'s mask search under the parameter budget: heads and FFN channels
    each cost the same everywhere, so for every global head count n_h keep the n_h
    heads of highest Fisher saliency, then as many FFN channels of highest saliency as
    fit; the n_h with the largest kept saliency wins. Without heads: global top-k."""
    kinds = np.asarray(ss.kinds)
    cost = problem.costs["params"]
    cap = problem.budget_limits()[0][2]  # on the structures' part (fixed costs removed)
    min_keep = {s: ix for s, ix in ss.layer_kind_index().items()}
    if "head" not in set(kinds):
        # Costs can be bilinear (a neuron's parameters depend on the next layer's width):
        # the running count is the structure set's exact prediction.
        total = cap + float(problem.fixed_costs.get("params", 0.0))
        order = np.argsort(-saliency, kind="stable")
        keep = np.zeros(len(kinds), dtype=bool)
        for ix in min_keep.values():  # every layer keeps its best structure
            keep[ix[np.argmax(saliency[ix])]] = True
        for i in order:
            if not keep[i]:
                keep[i] = True
                if ss.predict(keep)["params"] > total:
                    keep[i] = False
        return keep
    heads = np.flatnonzero(kinds == "head")
    ffn = np.flatnonzero(kinds != "head")
    h_order = heads[np.argsort(-saliency[heads], kind="stable")]
    f_order = ffn[np.argsort(-saliency[ffn], kind="stable")]
    ch, cf = float(cost[heads[0]]), float(cost[ffn[0]])
    best, best_keep = -np.inf, None
    for nh in range(heads.size + 1):
        rest = cap - nh * ch
        if rest < 0:
            break
        nf = min(int(rest // cf), ffn.size)
        keep = np.zeros(len(kinds), dtype=bool)
        keep[h_order[:nh]] = True
        keep[f_order[:nf]] = True
        val = saliency[keep].sum()
        if val > best:
            best, best_keep = val, keep
    return best_keep


# ----------------------------------------------------------------- one run
def evaluate(model, d, dshift, ft_epochs: int, seed: int) -> dict[str, float]:
    out = {"acc": accuracy(model, d.x_test, d.y_test), "acc_shift": accuracy(model, dshift, d.y_test)}
    train(model, d.x_train, d.y_train, epochs=ft_epochs, lr=1e-3, seed=seed)
    out["acc_ft"] = accuracy(model, d.x_test, d.y_test)
    out["acc_ft_shift"] = accuracy(model, dshift, d.y_test)
    return out


def run_family(name: str, seed: int, args) -> list[dict[str, Any]]:
    fam = FAMILIES[name]
    torch.manual_seed(seed)
    d0 = load_digits_split(seed=seed)
    d = d0.flat() if fam.flat else d0
    xshift = shifted(d.x_test, seed)
    model = fam.build()
    gc.freeze()
    t = time.perf_counter()
    train(model, d.x_train, d.y_train, epochs=fam.epochs, lr=fam.lr, seed=seed)
    t_train = time.perf_counter() - t
    model.eval()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(d.x_train.shape[0], generator=g)[:args.n_calib]
    calib = (d.x_train[idx], d.y_train[idx])
    ss = discover(model, tuple(d.x_train.shape[1:]))
    rows: list[dict[str, Any]] = [{"family": name, "seed": seed, "method": "dense",
                                   "params": ss.dense_params, "train_s": t_train,
                                   "acc": accuracy(model, d.x_test, d.y_test),
                                   "acc_shift": accuracy(model, xshift, d.y_test)}]
    print(json.dumps(rows[0]), flush=True)
    selections: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}
    for imp in ("magnitude", "taylor"):
        t = time.perf_counter()
        keep, tp_model = tp_select(model, ss, *calib, imp, fam.round_to, args.budget)
        times[f"tp-{imp}"] = time.perf_counter() - t
        pruned = apply_mask(ss, keep)
        n_tp, n_ours = sum(p.numel() for p in tp_model.parameters()), ss.predict(keep)["params"]
        assert n_tp == n_ours, (imp, n_tp, n_ours)  # the recovered mask is Torch-Pruning's
        with torch.no_grad():
            diff = float((pruned(d.x_test[:64]) - tp_model(d.x_test[:64])).abs().max())
        assert diff < 1e-4, diff
        selections[f"tp-{imp}"] = keep
    # The comparison's budget: the smaller of Torch-Pruning's two counts.
    budget = min(ss.predict(k)["params"] for k in selections.values()) / ss.dense_params
    fr = mask_fisher(ss, calib, labels="data", blocks=False)
    rules = {
        "uniform": ("magnitude", {}, "uniform"),
        "flap-fill": ("flap", {"standardize": True}, "score_fill"),
        "wanda-sp": ("wanda", {}, "uniform"),
        "exact-magnitude": ("magnitude", {}, "exact"),
    }
    for label, (imp, kw, sel) in rules.items():
        t = time.perf_counter()
        _, rep = pruning.prune(model, imp, budget, structures=ss, data=calib,
                               multiples=fam.multiples, selection=sel, strict=False,
                               baselines=False, importance_kw=kw)
        times[label] = time.perf_counter() - t
        selections[label] = np.isin(ss.ids, rep.kept_ids)
    t = time.perf_counter()
    p, _ = pruning.build_problem(ss, fr.saliency, budget, None, None)
    selections[kwon_label(ss)] = kwon_select(ss, p, fr.saliency)
    times[kwon_label(ss)] = time.perf_counter() - t
    opts = CalibrationOptions(k_best=args.k_best, seed=seed,
                              additivity_samples=args.additivity, **guard_options(args))
    runs = {}
    t = time.perf_counter()
    runs["calibrated"] = pruning.prune(model, data=calib, budget=budget, structures=ss,
                                       multiples=fam.multiples, baselines=False,
                                       calibration=opts)
    times["calibrated"] = time.perf_counter() - t
    # A rule whose granularity lands below that budget gets a second comparison, with
    # the pipeline at the smallest count any contender reached.
    low = min(ss.predict(k)["params"] for k in selections.values())
    if low < runs["calibrated"][1].after["params"] and (args.methods is None
                                                         or "calibrated@min" in args.methods):
        t = time.perf_counter()
        runs["calibrated@min"] = pruning.prune(model, data=calib, budget=low / ss.dense_params,
                                               structures=ss, multiples=fam.multiples,
                                               baselines=False, calibration=opts)
        times["calibrated@min"] = time.perf_counter() - t
    for label, (_, rep) in runs.items():
        selections[label] = np.isin(ss.ids, rep.kept_ids)
    for label, keep in selections.items():
        if args.methods is not None and label not in args.methods:
            continue
        row = {"family": name, "seed": seed, "method": label,
               "params": ss.predict(keep)["params"], "time_s": times[label]}
        if label in runs:
            ours, rep = runs[label]
            row.update({f"rec_{k}": v for k, v in evaluate(ours, d, xshift, args.ft_epochs,
                                                          seed).items()})
            row.update(evaluate(apply_mask(ss, keep), d, xshift, args.ft_epochs, seed))
            for k in ("candidates", "chosen", "additivity", "times_s"):
                row[k] = rep.stages.get(k)
        else:
            row.update(evaluate(apply_mask(ss, keep), d, xshift, args.ft_epochs, seed))
            work = dataclasses.replace(ss, model=copy.deepcopy(model))
            t = time.perf_counter()
            rec = reconstruct(work, keep, calib)
            row["rec_time_s"], row["rec_alpha"] = time.perf_counter() - t, rec.alpha
            rec_model = apply_mask(work, keep, inplace=True)
            row.update({f"rec_{k}": v for k, v in evaluate(rec_model, d, xshift, args.ft_epochs,
                                                          seed).items()})
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items()
                          if k not in ("candidates", "additivity", "times_s")}), flush=True)
    return rows


def add_method_args(ap: argparse.ArgumentParser, methods_help: str) -> None:
    """``--methods`` (which contenders run) and ``--max-weight-change`` (the pipeline's
    reconstruction guard), shared by the pipeline benchmarks."""
    ap.add_argument("--methods", nargs="+", default=None, help=methods_help)
    ap.add_argument("--max-weight-change", type=float, default=None,
                    help="the pipeline's reconstruction guard (default: CalibrationOptions'; "
                         "0 turns it off)")


def guard_options(args: argparse.Namespace) -> dict[str, Any]:
    """The CalibrationOptions keyword that ``--max-weight-change`` asks for (none: the
    default)."""
    if args.max_weight_change is None:
        return {}
    return {"max_weight_change": args.max_weight_change or None}


def summarize(rows: list[dict[str, Any]]) -> str:
    out = []
    fams = sorted({r["family"] for r in rows})
    cols = ["acc", "rec_acc", "acc_ft", "rec_acc_ft", "acc_shift", "rec_acc_shift",
            "acc_ft_shift", "rec_acc_ft_shift"]
    for f in fams:
        rs = [r for r in rows if r["family"] == f]
        seeds = sorted({r["seed"] for r in rs})
        out.append(f"\n### {f} ({len(seeds)} seeds)\n")
        out.append("| method | params | " + " | ".join(cols) + " |")
        out.append("|---|---:|" + "---:|" * len(cols))
        for m in dict.fromkeys(r["method"] for r in rs):
            mr = [r for r in rs if r["method"] == m]
            cells = []
            for c in cols:
                v = [r[c] for r in mr if c in r]
                cells.append(f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}" if v else "-")
            par = np.mean([r["params"] for r in mr])
            out.append(f"| {m} | {par:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="+", default=["vit"], choices=sorted(FAMILIES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--budget", type=float, default=0.5, help="target kept fraction of params")
    ap.add_argument("--n-calib", type=int, default=1024)
    ap.add_argument("--ft-epochs", type=int, default=5)
    ap.add_argument("--k-best", type=int, default=4)
    ap.add_argument("--additivity", type=int, default=16,
                    help="random allocations measured for the additivity check")
    add_method_args(ap, "contenders evaluated (every selection is still made, so the "
                        "budget is the same; default: all)")
    ap.add_argument("--out", default="benchmarks/out/calibrated.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    rows = []
    for fam in args.families:
        for seed in args.seeds:
            rs = run_family(fam, seed, args)
            rows += rs
            with open(args.out, "a") as f:
                for r in rs:
                    f.write(json.dumps(r) + "\n")
    print(summarize(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
