"""SASP: prune weight matrices in tiles of the systolic array's size.

A Linear layer ``y = x W^T + b`` runs as the GEMM X (M x K) times W^T (K x N), with
K = in_features, N = out_features and M = tokens in the batch. On a
weight-stationary R x C array every fold holds one R x C tile of W^T:

    tile (a, b) = W^T[a R : (a+1) R,  b C : (b+1) C] = W[b C : (b+1) C,  a R : (a+1) R]

and costs ``2R + C + M - 2`` cycles. SASP keeps or drops whole tiles; a dropped
tile's fold is skipped (no weight load, no streaming), so a matrix with t kept tiles
runs in ``t (2R + C + M - 2)`` cycles: latency is *linear* in kept tiles. The
attention score and value products and the unpruned layers (patch embedding,
classifier) stay dense and add fixed cycles.

The choice (``formulations/systolic.md``): one binary per tile,

    max  sum_tiles s_t x_t
    s.t. sum_tiles c_t x_t <= cap - fixed      (or: sum x_t >= (1 - rate) * #tiles)
         sum_{t in matrix j} x_t >= (1 - r_j^max) * #tiles_j    (per-matrix rate bounds)

with s_t the tile importance (``frobenius``: ||W_tile||_F^2, the energy the tile
carries; ``taylor``: |sum_{w in tile} w dL/dw|, the first-order loss change of
dropping it) and c_t the tile's fold cycles. Tiles of one matrix cost the same, so
the allocation engine solves it in its exact width formulation (top-k tiles per
matrix, one binary per matrix and tile count). The baseline is SASP's magnitude
threshold: drop the tiles of lowest score globally until the target is met.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InfeasibleProblemError, ValidationError, check
from ..experiments.training import fit
from .mapping import Gemm, model_gemms, total_cycles
from .systolic import fold_cycles, parse_array

__all__ = ["TileGrid", "tile_grids", "tile_importance", "SaspResult", "sasp_prune",
           "threshold_keep", "apply_tile_masks", "block_mask", "finetune_masked", "tiled_linear",
           "MATRIX_KINDS"]

MATRIX_KINDS = ("qkv", "proj", "ffn_in", "ffn_out")


def _matrix_kind(name: str) -> str:
    last = name.rsplit(".", 1)[-1]
    if last in ("q", "k", "v", "qkv", "query", "key", "value"):
        return "qkv"
    if last in ("proj", "out_proj", "o", "dense"):
        return "proj"
    if last in ("fc1", "up", "w1", "intermediate"):
        return "ffn_in"
    if last in ("fc2", "down", "w2", "output"):
        return "ffn_out"
    return "other"


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one Linear weight (N x K) on an R x C weight-stationary array."""

    module: str
    kind: str
    out_features: int  # N
    in_features: int  # K
    tokens: int  # M
    rows: int
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        """(tiles along K, tiles along N) = (ceil(K/R), ceil(N/C))."""
        return (math.ceil(self.in_features / self.rows), math.ceil(self.out_features / self.cols))

    @property
    def n_tiles(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def cycles_per_tile(self) -> int:
        return int(fold_cycles(self.tokens, self.rows, self.cols, "ws"))

    @property
    def dense_cycles(self) -> int:
        return self.n_tiles * self.cycles_per_tile

    def tile_id(self, a: int, b: int) -> str:
        return f"{self.module}:tile:{a}:{b}"


def tile_grids(model: nn.Module, input_shape: Sequence[int], array: Any, batch: int = 1,
               include: Callable[[str], bool] | None = None, tile: Any = None
               ) -> tuple[list[TileGrid], list[Gemm]]:
    """Tile grids of the prunable Linear layers and the GEMMs that stay dense.

    include(name) selects the Linear layers to prune; default: the q/k/v, output
    projection and FFN layers (``MATRIX_KINDS``). ``tile`` must equal the array
    (a pruned tile is a skipped fold only then)."""
    a = parse_array(array)
    if tile is not None:
        t = parse_array(tile)
        if (t.rows, t.cols) != (a.rows, a.cols):
            raise ValidationError(
                f"The tile size {t} does not fit the {a} array: SASP skips a fold per pruned "
                f"tile, so the tile must be exactly the array's size ({a}). Use tile={a} or "
                "choose an array of the tile's size.")
    include = include or (lambda name: _matrix_kind(name) in MATRIX_KINDS)
    gemms = model_gemms(model, input_shape, batch)
    mods = dict(model.named_modules())
    grids, dense = [], []
    for g in gemms:
        if g.role == "linear" and isinstance(mods.get(g.module), nn.Linear) and include(g.module):
            grids.append(TileGrid(g.module, _matrix_kind(g.module), g.N, g.K, g.M, a.rows, a.cols))
        else:
            dense.append(g)
    if not grids:
        raise ValidationError("No Linear layer was selected for tile pruning; the default "
                              "selects layers named q, k, v, proj, fc1, fc2.")
    return grids, dense


def block_mask(grid: TileGrid, keep: np.ndarray) -> torch.Tensor:
    """The N x K 0/1 mask of a weight from its tile keep matrix (tiles along K, tiles along N)."""
    keep = np.asarray(keep, dtype=bool)
    check(keep.shape == grid.shape, f"The tile keep matrix of {grid.module!r}",
          f"of shape {grid.shape} (tiles along K, tiles along N)", keep.shape)
    big = np.kron(keep.T.astype(np.float32), np.ones((grid.cols, grid.rows), dtype=np.float32))
    return torch.from_numpy(big[: grid.out_features, : grid.in_features].copy())


def _tile_sums(t: torch.Tensor, grid: TileGrid) -> np.ndarray:
    """Sum of an N x K tensor over each tile -> (tiles along K, tiles along N)."""
    a, b = grid.shape
    pad = torch.zeros(b * grid.cols, a * grid.rows, dtype=torch.float64)
    pad[: grid.out_features, : grid.in_features] = t.detach().double()
    s = pad.reshape(b, grid.cols, a, grid.rows).sum(dim=(1, 3))  # (b, a)
    return s.T.numpy().copy()


def tile_importance(model: nn.Module, grids: Sequence[TileGrid], method: str = "frobenius",
                    data: Any = None, input_shape: Sequence[int] | None = None,
                    batch_size: int = 256, normalize: str = "none") -> dict[str, np.ndarray]:
    """Score of every tile: ``frobenius`` ||W_tile||_F^2 or ``taylor``
    |sum_{w in tile} w dL/dw| (L = mean cross-entropy over ``data`` = (X, y)).

    normalize: ``none``, or ``matrix`` to divide each matrix's scores by their mean
    (raw norms are not comparable across matrices of different fan-in: a global
    ranking then empties the matrices with the smallest initialisation scale)."""
    check(normalize in ("none", "matrix"), "The tile score 'normalize'", "'none' or 'matrix'",
          normalize)
    raw = _tile_scores(model, grids, method, data, input_shape, batch_size)
    if normalize == "matrix":
        raw = {k: v / max(float(v.mean()), 1e-300) for k, v in raw.items()}
    return raw


def _tile_scores(model: nn.Module, grids: Sequence[TileGrid], method: str, data: Any,
                 input_shape: Sequence[int] | None, batch_size: int) -> dict[str, np.ndarray]:
    mods = dict(model.named_modules())
    if method == "frobenius":
        return {g.module: _tile_sums(mods[g.module].weight ** 2, g) for g in grids}
    check(method == "taylor", "The tile importance 'method'", "'frobenius' or 'taylor'", method)
    if data is None:
        raise ValidationError("Taylor tile importance needs data=(X, y) to take gradients on.")
    from ..nn.calib import batches

    if input_shape is None:
        raise ValidationError("The 'input_shape' of Taylor tile importance must be the shape "
                              "of one sample; got None.")
    shape = tuple(input_shape)
    weights = [mods[g.module].weight for g in grids]
    grads = [torch.zeros_like(w) for w in weights]
    n = 0
    was = model.training
    model.eval()
    try:
        for x, y in batches(data, shape, batch_size, "taylor", need_targets=True):
            assert y is not None  # need_targets=True
            loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
            for acc, gr in zip(grads, torch.autograd.grad(loss, weights)):
                acc += gr
            n += x.shape[0]
    finally:
        model.train(was)
    return {g.module: np.abs(_tile_sums(w.detach() * gr / n, g))
            for g, w, gr in zip(grids, weights, grads)}


@dataclass(frozen=True)
class SaspResult:
    """Tile keep decisions and their cycle counts on the array."""

    array: str
    method: str
    keep: dict[str, np.ndarray] = field(repr=False)
    n_tiles: int
    kept_tiles: int
    prune_rate: float  # fraction of tiles dropped
    retained_importance: float
    total_importance: float
    dense_cycles: int  # whole model, dense
    cycles: int  # whole model, pruned tiles skipped
    fixed_cycles: int  # attention products and unpruned layers
    per_matrix: list[dict[str, Any]] = field(repr=False)
    termination: str = "optimal"
    bound: float | None = None
    solve_time_s: float = 0.0

    @property
    def speedup(self) -> float:
        return self.dense_cycles / self.cycles

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "keep"}
        d["speedup"] = self.speedup
        return d


def threshold_keep(scores: dict[str, np.ndarray], n_drop: int | None = None,
                   max_rate: dict[str, float] | None = None, kinds: dict[str, str] | None = None,
                   tile_cycles: dict[str, int] | None = None, save_cycles: float | None = None
                   ) -> dict[str, np.ndarray]:
    """SASP's magnitude threshold: walk the tiles by increasing score (ties by order)
    and drop each one whose matrix has not yet dropped its ``max_rate`` share (by
    kind), until ``n_drop`` tiles are dropped or, with ``tile_cycles``, until the
    dropped tiles save at least ``save_cycles`` cycles."""
    names = list(scores)
    flat = np.concatenate([np.asarray(scores[k], dtype=np.float64).ravel() for k in names])
    owner = np.concatenate([np.full(np.size(scores[k]), i) for i, k in enumerate(names)])
    keep = np.ones(flat.size, dtype=bool)
    cap = [math.floor((max_rate or {}).get((kinds or {}).get(k, ""), 1.0) * np.size(scores[k])
                      + 1e-9) for k in names]
    dropped = [0] * len(names)
    n_done, saved = 0, 0.0
    for i in np.argsort(flat, kind="stable"):
        if save_cycles is not None:
            if saved >= save_cycles - 1e-9:
                break
        elif n_done >= (n_drop or 0):
            break
        if dropped[owner[i]] < cap[owner[i]]:
            keep[i] = False
            dropped[owner[i]] += 1
            n_done += 1
            if tile_cycles is not None:
                saved += tile_cycles[names[owner[i]]]
    out, pos = {}, 0
    for k in names:
        out[k] = keep[pos: pos + np.size(scores[k])].reshape(np.shape(scores[k]))
        pos += np.size(scores[k])
    return out


def sasp_prune(grids: Sequence[TileGrid], dense_gemms: Sequence[Gemm], scores: dict[str, np.ndarray],
               prune_rate: float | None = None, cycle_cap: float | None = None,
               max_rate: dict[str, float] | None = None, method: str = "exact",
               backend: str = "highs", time_limit_s: float | None = None) -> SaspResult:
    """Choose the tiles to keep.

    prune_rate: drop at least this fraction of all tiles; or
    cycle_cap: whole-model cycles at most this fraction of the dense model's.
    max_rate: per matrix kind (qkv, proj, ffn_in, ffn_out) the largest fraction of
        a matrix's tiles that may be dropped (default 1 = no bound).
    method: ``exact`` (the allocation engine) or ``threshold`` (magnitude baseline).
    """
    rates = _check_sasp(grids, scores, prune_rate, cycle_cap, max_rate, method)
    fixed = total_cycles(dense_gemms, f"{grids[0].rows}x{grids[0].cols}", "ws")
    n_tiles = sum(g.n_tiles for g in grids)
    target = _Target(prune_rate, cycle_cap, fixed, fixed + sum(g.dense_cycles for g in grids),
                     None if prune_rate is None else math.ceil(prune_rate * n_tiles - 1e-9))
    if method == "threshold":
        keep = _threshold_tiles(grids, scores, rates, target)
        return _sasp_result(grids, scores, keep, method, target, "heuristic", None, 0.0)
    res = _exact_tiles(grids, scores, rates, target, backend, time_limit_s)
    keep, pos = {}, 0
    for g in grids:
        keep[g.module] = res.keep[pos: pos + g.n_tiles].reshape(g.shape)
        pos += g.n_tiles
    return _sasp_result(grids, scores, keep, method, target, res.termination.value,
                        res.solve.bound, res.solve.solve_time_s)


@dataclass(frozen=True)
class _Target:
    """A SASP target: a tile prune rate (``n_drop`` tiles) or a cycle cap, and the
    model's fixed and dense cycles."""

    prune_rate: float | None
    cycle_cap: float | None
    fixed: int
    dense: int
    n_drop: int | None

    def __str__(self) -> str:
        return f"prune_rate={self.prune_rate}, cycle_cap={self.cycle_cap}"


def _check_sasp(grids: Sequence[TileGrid], scores: dict[str, np.ndarray],
                prune_rate: float | None, cycle_cap: float | None,
                max_rate: dict[str, float] | None, method: str) -> dict[str, float]:
    check((prune_rate is None) != (cycle_cap is None), "The SASP target",
          "exactly one of prune_rate or cycle_cap", f"prune_rate={prune_rate}, cycle_cap={cycle_cap}")
    check(method in ("exact", "threshold"), "The SASP 'method'", "'exact' or 'threshold'", method)
    if prune_rate is not None:
        check(isinstance(prune_rate, (int, float)) and 0 <= prune_rate <= 1, "The 'prune_rate'",
              "a fraction of tiles in [0, 1]", prune_rate)
    else:
        check(isinstance(cycle_cap, (int, float)) and 0 < cycle_cap <= 1, "The 'cycle_cap'",
              "a fraction of the dense cycles in (0, 1]", cycle_cap)
    rates = dict(max_rate or {})
    for k, v in rates.items():
        check(k in MATRIX_KINDS or k == "other", f"The max_rate key {k!r}",
              f"one of {MATRIX_KINDS}", k)
        check(isinstance(v, (int, float)) and 0 <= v <= 1, f"max_rate[{k!r}]",
              "a fraction in [0, 1]", v)
    for g in grids:
        check(g.module in scores and np.shape(scores[g.module]) == g.shape,
              f"The tile scores of {g.module!r}", f"an array of shape {g.shape}",
              np.shape(scores[g.module]) if g.module in scores else "missing")
    return rates


def _threshold_tiles(grids: Sequence[TileGrid], scores: dict[str, np.ndarray],
                     rates: dict[str, float], target: _Target) -> dict[str, np.ndarray]:
    """The magnitude baseline: drop tiles by increasing score within the per-matrix bounds;
    raises when the bounds stop it short of the target."""
    sc = {g.module: scores[g.module] for g in grids}
    kinds = {g.module: g.kind for g in grids}
    if target.cycle_cap is None:
        keep = threshold_keep(sc, target.n_drop, rates, kinds)
    else:  # drop tiles by increasing score until the cycles fit
        keep = threshold_keep(sc, None, rates, kinds,
                              tile_cycles={g.module: g.cycles_per_tile for g in grids},
                              save_cycles=target.dense - target.cycle_cap * target.dense)
    dropped = sum(int((~keep[g.module]).sum()) for g in grids)
    cycles = target.fixed + sum(int(keep[g.module].sum()) * g.cycles_per_tile for g in grids)
    short = (target.n_drop is not None and dropped < target.n_drop) or (
        target.cycle_cap is not None and cycles > target.cycle_cap * target.dense + 1e-9)
    if short:
        raise InfeasibleProblemError(
            f"The magnitude threshold cannot reach the target ({target}) within the "
            f"per-matrix max_rate bounds {rates}.")
    return keep


def _exact_tiles(grids: Sequence[TileGrid], scores: dict[str, np.ndarray],
                 rates: dict[str, float], target: _Target, backend: str,
                 time_limit_s: float | None) -> Any:
    """The exact tile choice by the allocation engine (one structure per tile)."""
    from ..alloc import AllocationProblem, allocate

    ids, layer, kind, sc, cyc = [], [], [], [], []
    for g in grids:
        s = np.asarray(scores[g.module], dtype=np.float64)
        for ai in range(g.shape[0]):
            for bi in range(g.shape[1]):
                ids.append(g.tile_id(ai, bi))
                layer.append(g.module)
                kind.append(g.kind)
                sc.append(float(s[ai, bi]))
                cyc.append(float(g.cycles_per_tile))
    p = AllocationProblem(ids, layer, kind, sc, {"tiles": np.ones(len(ids)), "cycles": cyc},
                          fixed_costs={"tiles": 0.0, "cycles": float(target.fixed)},
                          name="sasp-tiles")
    for k, v in rates.items():
        if k in set(kind) and v < 1:
            p.add_count_bounds(kind=k, min=1.0 - v, relative=True)
    if target.n_drop is not None:
        p.add_budget("tiles", max=len(ids) - target.n_drop)
    else:
        p.add_budget("cycles", max=(target.cycle_cap or 1.0) * target.dense)
    try:
        res = allocate(p, backend=backend, time_limit_s=time_limit_s, baselines=False)
    except InfeasibleProblemError as exc:
        raise InfeasibleProblemError(
            f"{exc} The per-matrix max_rate bounds {rates} cannot reach the target "
            f"({target}).") from exc
    if res.keep is None:
        raise InfeasibleProblemError(f"The tile allocation found no solution "
                                     f"({res.termination.value}); raise time_limit_s.")
    return res


def _sasp_result(grids: Sequence[TileGrid], scores: dict[str, np.ndarray],
                 keep: dict[str, np.ndarray], method: str, target: _Target, term: str,
                 bound: float | None, solve_s: float) -> SaspResult:
    per, kept_total, cycles, retained = [], 0, target.fixed, 0.0
    for g in grids:
        k = keep[g.module]
        kt = int(k.sum())
        kept_total += kt
        cycles += kt * g.cycles_per_tile
        retained += float(np.sum(np.asarray(scores[g.module])[k]))
        per.append({"module": g.module, "kind": g.kind, "tiles": g.n_tiles, "kept": kt,
                    "prune_rate": 1 - kt / g.n_tiles, "cycles": kt * g.cycles_per_tile,
                    "dense_cycles": g.dense_cycles})
    n_tiles = sum(g.n_tiles for g in grids)
    total_imp = float(sum(float(np.sum(scores[g.module])) for g in grids))
    return SaspResult(array=f"{grids[0].rows}x{grids[0].cols}", method=method, keep=keep,
                      n_tiles=n_tiles, kept_tiles=kept_total,
                      prune_rate=1 - kept_total / n_tiles, retained_importance=retained,
                      total_importance=total_imp, dense_cycles=int(target.dense),
                      cycles=int(cycles), fixed_cycles=int(target.fixed), per_matrix=per,
                      termination=term, bound=bound, solve_time_s=solve_s)


def apply_tile_masks(model: nn.Module, grids: Sequence[TileGrid], keep: dict[str, np.ndarray],
                     inplace: bool = False) -> nn.Module:
    """Zero the dropped tiles of every grid's weight (a copy unless ``inplace``)."""
    m = model if inplace else copy.deepcopy(model)
    mods = dict(m.named_modules())
    with torch.no_grad():
        for g in grids:
            w = mods[g.module].weight
            w.mul_(block_mask(g, keep[g.module]).to(w.dtype))
    return m


def finetune_masked(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor, epochs: int = 3, lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Fine-tune ``model`` in place by the kit's :func:`~optprune.experiments.fit`
    (the demo's fine-tuning: AdamW, cosine schedule) with the dropped tiles held at zero:
    ``masks`` (module name -> 0/1 weight mask, e.g. :func:`block_mask`) is applied before
    training and again after every step. Returns the model."""
    mods = dict(model.named_modules())
    missing = sorted(set(masks) - set(mods))
    check(not missing, "The masked modules", "modules of the model", missing)

    def reapply(_step: int = -1) -> None:
        with torch.no_grad():
            for name, m in masks.items():
                w = mods[name].weight
                w.mul_(m.to(device=w.device, dtype=w.dtype))

    reapply()
    fit(model, x, y, epochs=epochs, lr=lr, seed=seed, after_step=reapply)
    return model


def tiled_linear(x: np.ndarray, weight: np.ndarray, keep: np.ndarray, rows: int, cols: int,
                 bias: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Run ``x W^T (+ b)`` on the reference simulator with the dropped tiles'
    folds skipped; returns (output, cycles). For tests and small demos."""
    from .refsim import simulate_gemm

    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    res = simulate_gemm(x, weight.T, rows, cols, "ws", skip=~np.asarray(keep, dtype=bool))
    out = res.output if bias is None else res.output + np.asarray(bias)[None, :]
    return out, res.cycles


