"""LinearModel: the one solver-neutral MILP every formulation in optprune becomes.

    optimize   c @ x + offset             (sense "min" or "max")
    subject to row_lower <= A @ x <= row_upper
               col_lower <= x <= col_upper
               x[j] integer where integrality[j]

``A`` is a ``scipy.sparse.csc_matrix``; infinite bounds are ``+-numpy.inf``.
Models are read and written as MPS or LP through highspy, with a JSON sidecar
(``NAME.json`` beside ``NAME.mps``) holding the sense, names and free metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from ..errors import ValidationError
from ..experiments.jsonio import write_json_atomic

INF = np.inf


@dataclass
class LinearModel:
    c: np.ndarray
    A: sp.csc_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    integrality: np.ndarray
    sense: str = "min"
    offset: float = 0.0
    col_names: list[str] | None = None
    row_names: list[str] | None = None
    name: str = "model"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.c = np.asarray(self.c, dtype=np.float64).ravel()
        n = self.c.size
        A = self.A if sp.issparse(self.A) else sp.csc_matrix(np.asarray(self.A, dtype=np.float64))
        self.A = sp.csc_matrix(A, dtype=np.float64)
        self.A.sum_duplicates()
        self.A.sort_indices()
        m = self.A.shape[0]
        if self.A.shape[1] != n:
            raise ValidationError(
                f"LinearModel.A must have {n} columns (one per objective coefficient); "
                f"got shape {self.A.shape}."
            )
        self.row_lower = _vec(self.row_lower, m, "row_lower")
        self.row_upper = _vec(self.row_upper, m, "row_upper")
        self.col_lower = _vec(self.col_lower, n, "col_lower")
        self.col_upper = _vec(self.col_upper, n, "col_upper")
        self.integrality = np.asarray(self.integrality, dtype=bool).ravel()
        if self.integrality.size != n:
            raise ValidationError(
                f"LinearModel.integrality must have {n} entries; got {self.integrality.size}."
            )
        if self.sense not in ("min", "max"):
            raise ValidationError(f"LinearModel.sense must be 'min' or 'max'; got {self.sense!r}.")
        for arr, what in ((self.c, "c"), (self.A.data, "A")):
            if not np.all(np.isfinite(arr)):
                raise ValidationError(f"LinearModel.{what} must be finite; it holds NaN or inf.")
        if np.any(np.isnan(self.row_lower)) or np.any(np.isnan(self.row_upper)):
            raise ValidationError("LinearModel row bounds must not be NaN.")
        if np.any(np.isnan(self.col_lower)) or np.any(np.isnan(self.col_upper)):
            raise ValidationError("LinearModel column bounds must not be NaN.")
        if self.col_names is not None and len(self.col_names) != n:
            raise ValidationError(f"LinearModel.col_names must have {n} names.")
        if self.row_names is not None and len(self.row_names) != m:
            raise ValidationError(f"LinearModel.row_names must have {m} names.")

    # ------------------------------------------------------------------ sizes
    @property
    def num_cols(self) -> int:
        return int(self.c.size)

    @property
    def num_rows(self) -> int:
        return int(self.A.shape[0])

    @property
    def num_integer(self) -> int:
        return int(self.integrality.sum())

    @property
    def is_mip(self) -> bool:
        return bool(self.integrality.any())

    def objective_value(self, x: np.ndarray) -> float:
        return float(self.c @ np.asarray(x, dtype=np.float64) + self.offset)

    def max_violation(self, x: np.ndarray, relative: bool = False) -> float:
        """Largest violation of any row, column bound or integrality by ``x``. With
        ``relative``, each row's violation is divided by max(1, |its bound|) (a
        budget of 10^9 parameters broken by one parameter is broken by 1e-9)."""
        x = np.asarray(x, dtype=np.float64)
        ax = self.A @ x
        v = [0.0]
        if ax.size:
            lo_scale: float | np.ndarray = 1.0
            hi_scale: float | np.ndarray = 1.0
            if relative:
                lo_scale = np.maximum(1.0, np.abs(np.where(np.isfinite(self.row_lower),
                                                           self.row_lower, 0.0)))
                hi_scale = np.maximum(1.0, np.abs(np.where(np.isfinite(self.row_upper),
                                                           self.row_upper, 0.0)))
            v.append(float(np.max(np.maximum(self.row_lower - ax, 0.0) / lo_scale)))
            v.append(float(np.max(np.maximum(ax - self.row_upper, 0.0) / hi_scale)))
        v.append(float(np.max(np.maximum(self.col_lower - x, 0.0), initial=0.0)))
        v.append(float(np.max(np.maximum(x - self.col_upper, 0.0), initial=0.0)))
        xi = x[self.integrality]
        if xi.size:
            v.append(float(np.max(np.abs(xi - np.round(xi)))))
        return max(v)

    def add_row(self, cols: np.ndarray, vals: np.ndarray, lower: float, upper: float,
                name: str | None = None) -> int:
        """Append the row ``lower <= sum vals * x[cols] <= upper``; its index."""
        cols = np.asarray(cols, dtype=np.int64)
        row = sp.csc_matrix((np.asarray(vals, dtype=np.float64), (np.zeros(cols.size, np.int64),
                             cols)), shape=(1, self.num_cols))
        self.A = sp.vstack([self.A, row], format="csc")
        self.row_lower = np.append(self.row_lower, float(lower))
        self.row_upper = np.append(self.row_upper, float(upper))
        if self.row_names is not None:
            self.row_names.append(name or f"r{self.num_rows - 1}")
        return self.num_rows - 1

    def stats(self) -> dict[str, int]:
        return {
            "columns": self.num_cols,
            "rows": self.num_rows,
            "nonzeros": int(self.A.nnz),
            "integer_columns": self.num_integer,
        }

    # --------------------------------------------------------------------- io
    def write(self, path: str | os.PathLike, sidecar: bool = True) -> Path:
        """Write ``path`` (.mps or .lp, chosen by the suffix) and ``path.json``.

        The MPS/LP file is written by HiGHS; the JSON sidecar carries what those
        formats do not keep reliably (sense, offset, names, free metadata).
        Files are written to a temporary name and renamed, so a failure never
        leaves a partial file.
        """
        from .backends.highs import highs_from_model

        path = Path(path)
        if path.suffix.lower() not in (".mps", ".lp"):
            raise ValidationError(
                f"The model file name must end in .mps or .lp; got {path.name!r}."
            )
        h = highs_from_model(self)

        def write(tmp: Path) -> None:
            # HiGHS picks the format from the suffix: the temporary name ends in it.
            real = tmp.with_suffix("")
            status = h.writeModel(str(real))
            if not real.exists() or str(status).endswith("kError"):
                real.unlink(missing_ok=True)
                raise OSError(f"HiGHS could not write {path}: status {status}")
            os.replace(real, tmp)

        replace_atomic(path, write)
        if sidecar:
            write_json_atomic(path.with_suffix(".json"), self.sidecar())
        return path

    def sidecar(self) -> dict[str, Any]:
        return {
            "format": "optprune.LinearModel/1",
            "name": self.name,
            "sense": self.sense,
            "offset": self.offset,
            **self.stats(),
            "metadata": self.metadata,
        }

    @classmethod
    def read(cls, path: str | os.PathLike) -> "LinearModel":
        """Read an MPS or LP file through HiGHS (and its JSON sidecar if present)."""
        import highspy

        path = Path(path)
        if not path.exists():
            raise ValidationError(f"The model file {str(path)!r} does not exist.")
        from .backends.highs import new_highs

        h = new_highs()
        status = h.readModel(str(path))
        if status == highspy.HighsStatus.kError:
            raise ValidationError(f"HiGHS could not read {str(path)!r} as a model file.")
        lp = h.getLp()
        n, m = lp.num_col_, lp.num_row_
        A = lp.a_matrix_
        if A.format_ == highspy.MatrixFormat.kColwise:
            mat = sp.csc_matrix(
                (np.asarray(A.value_), np.asarray(A.index_), np.asarray(A.start_)), shape=(m, n)
            )
        else:
            mat = sp.csr_matrix(
                (np.asarray(A.value_), np.asarray(A.index_), np.asarray(A.start_)), shape=(m, n)
            ).tocsc()
        integ = np.zeros(n, dtype=bool)
        if len(lp.integrality_):
            integ = np.array(
                [int(v) != int(highspy.HighsVarType.kContinuous) for v in lp.integrality_], dtype=bool
            )
        sense = "max" if lp.sense_ == highspy.ObjSense.kMaximize else "min"
        col_names = list(lp.col_names_) if len(lp.col_names_) == n and n else None
        row_names = list(lp.row_names_) if len(lp.row_names_) == m and m else None
        meta: dict[str, Any] = {}
        name = path.stem
        offset = float(lp.offset_)
        side = path.with_suffix(".json")
        if side.exists():
            info = json.loads(side.read_text())
            if info.get("format", "").startswith("optprune.LinearModel") or "sense" in info:
                sense = info.get("sense", sense)
                offset = float(info.get("offset", offset))
                name = info.get("name", name)
                meta = info.get("metadata", {})
        return cls(
            c=np.asarray(lp.col_cost_, dtype=np.float64),
            A=mat,
            row_lower=_from_highs_inf(np.asarray(lp.row_lower_, dtype=np.float64)),
            row_upper=_from_highs_inf(np.asarray(lp.row_upper_, dtype=np.float64)),
            col_lower=_from_highs_inf(np.asarray(lp.col_lower_, dtype=np.float64)),
            col_upper=_from_highs_inf(np.asarray(lp.col_upper_, dtype=np.float64)),
            integrality=integ,
            sense=sense,
            offset=offset,
            col_names=col_names,
            row_names=row_names,
            name=name,
            metadata=meta,
        )


class ModelBuilder:
    """Collects columns and rows in numpy batches, then makes one LinearModel.

    Every ``add_*`` call takes arrays, so formulations never loop over weights in
    Python; ``build`` assembles the CSC matrix once.
    """

    def __init__(self, name: str = "model", sense: str = "min") -> None:
        self.name = name
        self.sense = sense
        self.offset = 0.0
        self._c: list[np.ndarray] = []
        self._lb: list[np.ndarray] = []
        self._ub: list[np.ndarray] = []
        self._int: list[np.ndarray] = []
        self._cnames: list[Sequence[str] | None] = []
        self._rows_i: list[np.ndarray] = []
        self._rows_j: list[np.ndarray] = []
        self._rows_v: list[np.ndarray] = []
        self._rl: list[np.ndarray] = []
        self._ru: list[np.ndarray] = []
        self._rnames: list[Sequence[str] | None] = []
        self.n = 0
        self.m = 0
        self.metadata: dict[str, Any] = {}
        self._cost_updates: list[tuple[np.ndarray, np.ndarray]] = []

    def add_columns(
        self,
        count: int,
        lower: ArrayLike = 0.0,
        upper: ArrayLike = INF,
        cost: ArrayLike = 0.0,
        integer: ArrayLike = False,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Add ``count`` columns; return their indices."""
        count = int(count)
        self._c.append(np.broadcast_to(np.asarray(cost, dtype=np.float64), (count,)).copy())
        self._lb.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (count,)).copy())
        self._ub.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (count,)).copy())
        self._int.append(np.broadcast_to(np.asarray(integer, dtype=bool), (count,)).copy())
        self._cnames.append(names)
        idx = np.arange(self.n, self.n + count)
        self.n += count
        return idx

    def add_rows(
        self,
        rows: ArrayLike,
        cols: ArrayLike,
        vals: ArrayLike,
        lower: ArrayLike,
        upper: ArrayLike,
        count: int | None = None,
        names: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Add rows given as COO triplets with *local* row numbers 0..count-1."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if count is None:
            count = int(rows.max()) + 1 if rows.size else 0
        self._rows_i.append(rows + self.m)
        self._rows_j.append(np.asarray(cols, dtype=np.int64).ravel())
        self._rows_v.append(np.asarray(vals, dtype=np.float64).ravel())
        self._rl.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (count,)).copy())
        self._ru.append(np.broadcast_to(np.asarray(upper, dtype=np.float64), (count,)).copy())
        self._rnames.append(names)
        idx = np.arange(self.m, self.m + count)
        self.m += count
        return idx

    def set_cost(self, cols: ArrayLike, cost: ArrayLike) -> None:
        """Set objective coefficients of existing columns (applied at build)."""
        self._cost_updates.append((np.asarray(cols, dtype=np.int64), np.asarray(cost, np.float64)))

    def build(self) -> LinearModel:
        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        i = cat(self._rows_i, np.int64)
        j = cat(self._rows_j, np.int64)
        v = cat(self._rows_v, np.float64)
        A = sp.csc_matrix((v, (i, j)), shape=(self.m, self.n))
        c = cat(self._c, np.float64)
        for cols, cost in self._cost_updates:
            c[cols] = cost
        return LinearModel(
            c=c,
            A=A,
            row_lower=cat(self._rl, np.float64),
            row_upper=cat(self._ru, np.float64),
            col_lower=cat(self._lb, np.float64),
            col_upper=cat(self._ub, np.float64),
            integrality=cat(self._int, bool),
            sense=self.sense,
            offset=self.offset,
            col_names=_names(self._cnames, self._c, "x"),
            row_names=_names(self._rnames, self._rl, "r"),
            name=self.name,
            metadata=dict(self.metadata),
        )


def _names(
    parts: list[Sequence[str] | None], sizes: list[np.ndarray], prefix: str
) -> list[str] | None:
    if all(p is None for p in parts):
        return None
    out: list[str] = []
    start = 0
    for p, s in zip(parts, sizes):
        k = s.size
        out.extend(list(p) if p is not None else [f"{prefix}{start + t}" for t in range(k)])
        start += k
    return out


def _vec(x: Any, size: int, what: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(x, dtype=np.float64), (size,)).copy()
    return arr


def _from_highs_inf(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[a >= 1e30] = INF
    a[a <= -1e30] = -INF
    return a


def replace_atomic(path: Path, write: Any) -> Path:
    """Call ``write(tmp)`` on a fresh temporary path beside ``path``, then rename it
    to ``path``; the temporary file is removed if anything fails."""
    import tempfile

    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix + ".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def iter_names(names: Iterable[str] | None, n: int, prefix: str) -> list[str]:
    return list(names) if names is not None else [f"{prefix}{i}" for i in range(n)]
