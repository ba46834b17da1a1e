"""Cycle and SRAM-traffic model of a GEMM on an R x C systolic array.

This is the compute model of SCALE-Sim (no memory stalls unless a bandwidth is
given), for the three classic dataflows. A GEMM multiplies the inputs ``A``
(M x K, SCALE-Sim's ifmap) by the weights ``B`` (K x N, its filter) into the
outputs ``O = A B`` (M x N).

Mapping. Each dataflow keeps one operand's dimension on the array rows (Sr),
one on the columns (Sc) and streams the third (T) through time:

====================  ========  ========  ========  =========================
dataflow              Sr (rows) Sc (cols) T (time)  stays in the PEs
====================  ========  ========  ========  =========================
output-stationary os  M         N         K         the partial sums of O
weight-stationary ws  K         N         M         a tile of B
input-stationary  is  K         M         N         a tile of A^T
====================  ========  ========  ========  =========================

Folds. The matrix of Sr x Sc does not fit the array, so it is cut into
``F = ceil(Sr/R) * ceil(Sc/C)`` folds, run one after the other. Every fold uses
the whole array's schedule (a padded fold costs as much as a full one):

* os: ``R + C + T - 2`` cycles per fold. Operands enter skewed from the left and
  top edges; PE (p, q) does its k-th MAC at cycle ``p + q + k``, the last MAC of
  the fold is at ``(R-1) + (C-1) + (T-1)``.
* ws, is: ``2R + C + T - 2`` cycles per fold. ``R`` cycles shift the stationary
  tile in from the top; then the streamed operand enters skewed from the left,
  partial sums flow down, and row t of the output leaves column q at
  ``R + t + (R-1) + q``.

So ``cycles = F * per_fold`` (SCALE-Sim's report counts cycles from 0 and shows one
less). Latency is therefore a staircase in every dimension: it is constant while
a dimension grows inside one multiple of R (or C) and jumps when it crosses one.

SRAM traffic (words, padding excluded), with r x c the used part of a fold:
every dataflow moves ``r*c + T*(r + c)`` words per fold:

* os: reads ``T*r`` inputs + ``T*c`` weights; writes ``r*c`` outputs, so in
  total reads = M K ceil(N/C) + K N ceil(M/R), writes = M N.
* ws: reads ``r*c`` weights + ``T*r`` inputs; writes ``T*c`` partial sums, so
  reads = K N + M K ceil(N/C), writes = M N ceil(K/R).
* is: reads ``r*c`` inputs + ``T*r`` weights; writes ``T*c`` partial sums, so
  reads = M K + K N ceil(M/C), writes = M N ceil(K/R).

Utilization = useful MACs / PE-cycles = M K N / (R C cycles); mapping efficiency
= Sr Sc / (ceil(Sr/R) R ceil(Sc/C) C), the share of PEs a fold maps on average.

Bandwidth stalls (optional, ``bandwidth_words_per_cycle = b``): with double
buffering a fold cannot finish before its traffic has moved, so a fold takes
``max(per_fold, ceil((r*c + T*(r+c)) / b))`` cycles; ``stall_cycles`` is the
excess over the compute cycles. Without ``b`` there are no stalls.

The formulas are checked cycle by cycle against :mod:`optprune.hw.refsim`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ValidationError, check

__all__ = ["DATAFLOWS", "ArrayConfig", "GemmCost", "parse_array", "gemm_dims", "gemm_cycles",
           "gemm_cost", "fold_cycles"]

DATAFLOWS = ("os", "ws", "is")
_NAMES = {"os": "output-stationary", "ws": "weight-stationary", "is": "input-stationary"}


@dataclass(frozen=True)
class ArrayConfig:
    """An R x C array of processing elements (``rows`` x ``cols``)."""

    rows: int
    cols: int

    def __post_init__(self) -> None:
        for what, v in (("rows", self.rows), ("cols", self.cols)):
            check(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1,
                  f"The '{what}' of a systolic array", "a positive integer", v,
                  "Give the array as RxC, e.g. 8x8.")

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


def parse_array(spec: Any) -> ArrayConfig:
    """'8x8', '16x4', 8 or '8' (square), (R, C) or an ArrayConfig -> ArrayConfig."""
    if isinstance(spec, ArrayConfig):
        return spec
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return ArrayConfig(int(spec), int(spec))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return ArrayConfig(*(int(v) if isinstance(v, (int, np.integer)) else v for v in spec))
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(-?\d+)\s*[xX*]\s*(-?\d+)\s*", spec)
        if m:
            return ArrayConfig(int(m.group(1)), int(m.group(2)))
        m = re.fullmatch(r"\s*(-?\d+)\s*", spec)
        if m:
            return ArrayConfig(int(m.group(1)), int(m.group(1)))
    raise ValidationError(f"The systolic array must be given as RxC (e.g. '8x8' or '16x4'), an "
                          f"int for a square array, or a pair (R, C); got {spec!r}.")


def check_dataflow(dataflow: Any) -> str:
    d = str(dataflow).lower() if isinstance(dataflow, str) else dataflow
    check(d in DATAFLOWS, "The 'dataflow'", "one of 'os' (output-), 'ws' (weight-) or 'is' "
          "(input-stationary)", dataflow)
    return d


def _check_dims(M: Any, K: Any, N: Any) -> None:
    for what, v in (("M", M), ("K", K), ("N", N)):
        a = np.asarray(v)
        ok = a.dtype.kind in "iu" and bool(np.all(a >= 1))
        if not ok and a.dtype.kind == "f":
            ok = bool(np.all(a == np.round(a)) and np.all(a >= 1))
        check(ok, f"The GEMM dimension {what}", "a positive integer (the GEMM is M x K times K x N)",
              v if a.ndim == 0 else f"array with min {a.min() if a.size else 'empty'}")


def gemm_dims(M: Any, K: Any, N: Any, dataflow: str) -> tuple[Any, Any, Any]:
    """(Sr, Sc, T) of a dataflow: os (M, N, K); ws (K, N, M); is (K, M, N)."""
    d = check_dataflow(dataflow)
    return {"os": (M, N, K), "ws": (K, N, M), "is": (K, M, N)}[d]


def fold_cycles(T: Any, rows: int, cols: int, dataflow: str) -> Any:
    """Cycles of one fold: os R + C + T - 2; ws and is 2R + C + T - 2."""
    d = check_dataflow(dataflow)
    return (rows if d == "os" else 2 * rows) + cols + T - 2


def gemm_cycles(M: Any, K: Any, N: Any, array: Any, dataflow: str) -> Any:
    """Compute cycles ceil(Sr/R) ceil(Sc/C) per_fold; numpy arrays of M, K, N
    broadcast (used to tabulate latency over widths)."""
    a = parse_array(array)
    _check_dims(M, K, N)
    sr, sc, t = gemm_dims(np.asarray(M, dtype=np.int64), np.asarray(K, dtype=np.int64),
                          np.asarray(N, dtype=np.int64), dataflow)
    folds = -(-sr // a.rows) * -(-sc // a.cols)
    out = folds * fold_cycles(t, a.rows, a.cols, dataflow)
    return int(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class GemmCost:
    """Everything the model says about one GEMM on one array (JSON-ready)."""

    M: int
    K: int
    N: int
    rows: int
    cols: int
    dataflow: str
    sr: int
    sc: int
    t: int
    row_folds: int
    col_folds: int
    folds: int
    cycles_per_fold: int
    cycles: int  # compute cycles (SCALE-Sim's compute model, no stalls)
    macs: int
    utilization: float
    mapping_efficiency: float
    sram_reads: int
    sram_writes: int
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int
    bandwidth_words_per_cycle: float | None
    stall_cycles: int
    total_cycles: int  # cycles + stall_cycles

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dataflow_name"] = _NAMES[self.dataflow]
        d["array"] = f"{self.rows}x{self.cols}"
        return d


def gemm_cost(M: int, K: int, N: int, array: Any, dataflow: str,
              bandwidth_words_per_cycle: float | None = None) -> GemmCost:
    """The full cost of an M x K by K x N GEMM (see the module docstring)."""
    a = parse_array(array)
    d = check_dataflow(dataflow)
    for what, v in (("M", M), ("K", K), ("N", N)):
        check(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1,
              f"The GEMM dimension {what}", "a positive integer (the GEMM is M x K times K x N)", v)
    M, K, N = int(M), int(K), int(N)
    R, C = a.rows, a.cols
    sr, sc, t = gemm_dims(M, K, N, d)
    rf, cf = -(-sr // R), -(-sc // C)
    per = int(fold_cycles(t, R, C, d))
    cycles = rf * cf * per
    macs = M * K * N
    # used rows / cols of the folds: full ones and the last (possibly partial) one
    rows_used = [(R, sr // R), (sr % R, 1)] if sr % R else [(R, rf)]
    cols_used = [(C, sc // C), (sc % C, 1)] if sc % C else [(C, cf)]
    stationary = stream_r = stream_c = 0
    stall = 0
    if bandwidth_words_per_cycle is not None:
        b = bandwidth_words_per_cycle
        check(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0,
              "The 'bandwidth_words_per_cycle'", "a positive finite number (SRAM words moved "
              "per cycle)", b)
    for r, nr in rows_used:
        for c, nc in cols_used:
            stationary += nr * nc * r * c
            stream_r += nr * nc * t * r
            stream_c += nr * nc * t * c
            if bandwidth_words_per_cycle is not None:
                words = r * c + t * (r + c)
                need = math.ceil(words / bandwidth_words_per_cycle - 1e-12)
                stall += nr * nc * max(0, need - per)
    if d == "os":
        ifmap, filt, writes = stream_r, stream_c, stationary
    elif d == "ws":
        ifmap, filt, writes = stream_r, stationary, stream_c
    else:
        ifmap, filt, writes = stationary, stream_r, stream_c
    return GemmCost(
        M=M, K=K, N=N, rows=R, cols=C, dataflow=d, sr=sr, sc=sc, t=t, row_folds=rf, col_folds=cf,
        folds=rf * cf, cycles_per_fold=per, cycles=cycles, macs=macs,
        utilization=macs / (R * C * cycles), mapping_efficiency=(sr * sc) / (rf * R * cf * C),
        sram_reads=ifmap + filt, sram_writes=writes, ifmap_reads=ifmap, filter_reads=filt,
        ofmap_writes=writes,
        bandwidth_words_per_cycle=None if bandwidth_words_per_cycle is None
        else float(bandwidth_words_per_cycle),
        stall_cycles=int(stall), total_cycles=int(cycles + stall),
    )
