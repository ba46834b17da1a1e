"""A cycle-stepped reference simulation of a small systolic array.

Written independently of :mod:`optprune.hw.systolic` (it imports none of its
formulas): it moves operands through per-PE registers one clock at a time,
computes the product numerically, and *measures* cycles, SRAM words and useful
MACs. The tests check that the closed-form model equals what it measures and that
the product equals ``A @ B``.

Hardware modelled (one fold at a time, the controller runs every fold on the whole
R x C array, feeding zeros where the fold does not reach, as SCALE-Sim does):

* output-stationary: each PE (p, q) holds an accumulator. Row p of the left edge
  receives ``A[m0+p, k]`` at fold cycle ``k + p``, column q of the top edge
  ``B[k, n0+q]`` at ``k + q`` (skewed feeding); every cycle the horizontal
  registers shift right and the vertical ones down, and a PE multiplies what it
  holds when both operands carry the same k. The fold ends with the cycle of its
  last MAC.
* weight-/input-stationary (a stationary matrix S of Sr x Sc, a streamed matrix
  X of T x Sr, output X S): the stationary tile is shifted in from the top, one row
  per cycle, over R cycles; then row t of X enters row p of the left edge at cycle
  ``t + p``; inputs shift right, partial sums shift down, and a partial sum that
  leaves the bottom of column q is written out. The fold ends with the cycle the
  last partial sum leaves the array. ws: S = B, X = A; is: S = A^T, X = B^T.

``skip`` (ws/is) marks folds whose stationary tile is pruned: they are not run at
all (no load, no streaming), which is how SASP executes tile-pruned weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError

__all__ = ["SimResult", "simulate_gemm"]


@dataclass(frozen=True)
class SimResult:
    output: np.ndarray  # M x N
    cycles: int
    folds_run: int
    useful_macs: int
    pe_cycles: int
    sram_reads: int
    sram_writes: int

    @property
    def utilization(self) -> float:
        return self.useful_macs / self.pe_cycles if self.pe_cycles else 0.0


def simulate_gemm(A: np.ndarray, B: np.ndarray, rows: int, cols: int, dataflow: str,
                  skip: np.ndarray | None = None) -> SimResult:
    """Run O = A @ B on a rows x cols array, cycle by cycle."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[0] or A.size == 0 or B.size == 0:
        raise ValidationError(f"simulate_gemm needs A (M x K) and B (K x N) with matching K; got "
                              f"{A.shape} and {B.shape}.")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
               for v in (rows, cols)):
        raise ValidationError(f"The array of simulate_gemm must have positive integer rows and "
                              f"cols; got {rows!r} x {cols!r}.")
    rows, cols = int(rows), int(cols)
    if dataflow == "os":
        if skip is not None:
            raise ValidationError("Tile skipping is modelled for the ws and is dataflows only.")
        return _sim_os(A, B, rows, cols)
    if dataflow == "ws":
        return _sim_stationary(B, A, rows, cols, skip, transpose_out=False)
    if dataflow == "is":
        return _sim_stationary(A.T, B.T, rows, cols, skip, transpose_out=True)
    raise ValidationError(f"The 'dataflow' must be one of 'os', 'ws' or 'is'; got {dataflow!r}.")


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _sim_os(A: np.ndarray, B: np.ndarray, R: int, C: int) -> SimResult:
    M, K = A.shape
    N = B.shape[1]
    out = np.zeros((M, N))
    cycles = macs = reads = writes = folds = 0
    for m0, m1 in _chunks(M, R):
        for n0, n1 in _chunks(N, C):
            folds += 1
            acc = np.zeros((R, C))
            h_val = np.zeros((R, C))
            h_tag = np.full((R, C), -1)  # k carried by the horizontal register, -1 = bubble
            h_real = np.zeros((R, C), dtype=bool)
            v_val = np.zeros((R, C))
            v_tag = np.full((R, C), -1)
            v_real = np.zeros((R, C), dtype=bool)
            last_mac = -1
            cyc = 0
            while True:
                # shift, then feed the edges (skewed: row p gets k = cyc - p)
                h_val[:, 1:], h_tag[:, 1:], h_real[:, 1:] = h_val[:, :-1], h_tag[:, :-1], h_real[:, :-1]
                v_val[1:, :], v_tag[1:, :], v_real[1:, :] = v_val[:-1, :], v_tag[:-1, :], v_real[:-1, :]
                for p in range(R):
                    k = cyc - p
                    if 0 <= k < K:
                        real = m0 + p < m1
                        h_val[p, 0] = A[m0 + p, k] if real else 0.0
                        h_tag[p, 0], h_real[p, 0] = k, real
                        reads += real
                    else:
                        h_tag[p, 0], h_real[p, 0], h_val[p, 0] = -1, False, 0.0
                for q in range(C):
                    k = cyc - q
                    if 0 <= k < K:
                        real = n0 + q < n1
                        v_val[0, q] = B[k, n0 + q] if real else 0.0
                        v_tag[0, q], v_real[0, q] = k, real
                        reads += real
                    else:
                        v_tag[0, q], v_real[0, q], v_val[0, q] = -1, False, 0.0
                fire = (h_tag >= 0) & (h_tag == v_tag)
                if fire.any():
                    acc += np.where(fire, h_val * v_val, 0.0)
                    macs += int((fire & h_real & v_real).sum())
                    last_mac = cyc
                elif last_mac >= 0 and not (h_tag >= 0).any() and not (v_tag >= 0).any():
                    break
                cyc += 1
            fold_cycles = last_mac + 1
            cycles += fold_cycles
            out[m0:m1, n0:n1] = acc[: m1 - m0, : n1 - n0]
            writes += (m1 - m0) * (n1 - n0)
    return SimResult(out, cycles, folds, macs, cycles * R * C, reads, writes)


def _sim_stationary(S: np.ndarray, X: np.ndarray, R: int, C: int, skip: np.ndarray | None,
                    transpose_out: bool) -> SimResult:
    """O = X @ S with S (Sr x Sc) stationary, X (T x Sr) streamed."""
    Sr, Sc = S.shape
    T = X.shape[0]
    out = np.zeros((T, Sc))
    row_chunks, col_chunks = _chunks(Sr, R), _chunks(Sc, C)
    if skip is not None:
        skip = np.asarray(skip, dtype=bool)
        if skip.shape != (len(row_chunks), len(col_chunks)):
            raise ValidationError(f"The 'skip' mask must have one entry per fold, shape "
                                  f"({len(row_chunks)}, {len(col_chunks)}); got {skip.shape}.")
    cycles = macs = reads = writes = folds = 0
    for i, (r0, r1) in enumerate(row_chunks):
        for j, (c0, c1) in enumerate(col_chunks):
            if skip is not None and skip[i, j]:
                continue
            folds += 1
            # load: R cycles, row R-1 enters first and is pushed down
            w = np.zeros((R, C))
            w_real = np.zeros((R, C), dtype=bool)
            cyc = 0
            for step in range(R):
                w[1:], w_real[1:] = w[:-1].copy(), w_real[:-1].copy()
                p = R - 1 - step
                for q in range(C):
                    real = (r0 + p < r1) and (c0 + q < c1)
                    w[0, q] = S[r0 + p, c0 + q] if real else 0.0
                    w_real[0, q] = real
                    reads += real
                cyc += 1
            h_val = np.zeros((R, C))
            h_tag = np.full((R, C), -1)
            h_real = np.zeros((R, C), dtype=bool)
            ps = np.zeros((R, C))
            ps_tag = np.full((R, C), -1)  # which streamed row t the partial sum belongs to
            pending = T * C  # outputs still to leave the bottom edge (whole array schedule)
            t_cyc = 0
            while pending:
                h_val[:, 1:], h_tag[:, 1:], h_real[:, 1:] = h_val[:, :-1], h_tag[:, :-1], h_real[:, :-1]
                for p in range(R):
                    t = t_cyc - p
                    if 0 <= t < T:
                        real = r0 + p < r1
                        h_val[p, 0] = X[t, r0 + p] if real else 0.0
                        h_tag[p, 0], h_real[p, 0] = t, real
                        reads += real
                    else:
                        h_val[p, 0], h_tag[p, 0], h_real[p, 0] = 0.0, -1, False
                # partial sums from the row above (registered last cycle), plus this PE's MAC
                above = np.vstack([np.zeros((1, C)), ps[:-1]])
                above_tag = np.vstack([h_tag[0:1] * 0 - 1, ps_tag[:-1]])
                new_tag = np.where(h_tag >= 0, h_tag, -1)
                if np.any((new_tag[1:] >= 0) & (above_tag[1:] != new_tag[1:])):
                    raise AssertionError("partial sum met the wrong input row")  # schedule bug
                ps = np.where(new_tag >= 0, above + w * h_val, 0.0)
                ps_tag = new_tag
                macs += int((h_real & w_real & (h_tag >= 0)).sum())
                for q in range(C):
                    t = ps_tag[R - 1, q]
                    if t >= 0:
                        pending -= 1
                        if c0 + q < c1:
                            out[t, c0 + q] += ps[R - 1, q]
                            writes += 1
                t_cyc += 1
            cycles += cyc + t_cyc
    result = out.T if transpose_out else out
    return SimResult(result, cycles, folds, macs, cycles * R * C, reads, writes)
