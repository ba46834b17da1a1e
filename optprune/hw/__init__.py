"""Hardware co-design: the systolic-array latency model (SCALE-Sim's compute model),
its cycle-stepped reference simulation, layer -> GEMM mapping with staircase
latency tables, tile-aligned allocation and SASP tile pruning.

Names are imported lazily: ``systolic`` and ``refsim`` need numpy only, the rest
loads torch when first used (so ``optprune systolic cycles`` stays light).
"""

from __future__ import annotations

from .._extras import lazy_getattr

_LAZY = {
    **{n: "optprune.hw.systolic" for n in (
        "DATAFLOWS", "ArrayConfig", "GemmCost", "fold_cycles", "gemm_cost", "gemm_cycles",
        "gemm_dims", "parse_array")},
    **{n: "optprune.hw.refsim" for n in ("SimResult", "simulate_gemm")},
    **{n: "optprune.hw.mapping" for n in (
        "Gemm", "LatencyModel", "SlotLatency", "conv2d_gemm", "latency_model", "linear_gemm",
        "model_gemms", "total_cycles", "transformer_block_gemms")},
    **{n: "optprune.hw.plan" for n in ("PlanResult", "plan_allocation")},
    **{n: "optprune.hw.tiles" for n in (
        "SaspResult", "TileGrid", "apply_tile_masks", "block_mask", "sasp_prune", "threshold_keep",
        "tile_grids", "tile_importance", "tiled_linear")},
}

__all__ = list(_LAZY)  # noqa: PLE0605 (built from the lazy table)


__getattr__ = lazy_getattr(__name__, _LAZY)
