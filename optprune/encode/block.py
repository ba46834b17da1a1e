"""A trained (pruned) ReLU network as a block of the user's own optimization model.

Constraint learning: a network ``y = f(x)`` learned from data becomes constraints of a
larger model whose other variables and constraints are the user's. The block owns
columns named after the user's inputs and outputs (``PREFIX.NAME``, the OMLT user's
``m.nn.inputs[...]`` / ``m.nn.outputs[...]``) plus its internal columns and rows; the
user's rows link to them by column (ModelBuilder / LinearModel) or by variable (Pyomo).

The inputs live in the box the user gives (``input_bounds``), which is the region the
pre-activation bounds are computed over (``bounds``: interval, symbolic, lp; see
``formulations/bounds.md``) and so the region over which the block is exact: for every
x in the box, the block's columns admit exactly one value of y, ``f(x)`` (big-M rows
with those bounds, ``formulations/adversarial.md``; binaries only for the neurons
whose sign the box does not fix). An unbounded input has no finite big-M: it is an
error naming the input. Tighter input bounds give fewer binaries and a faster solve.

``NetworkBlock.forward_error(x)`` re-checks a solution: the largest difference between
the block's outputs and the network evaluated in float64 at the block's inputs.
``to_omlt`` gives OMLT's ``NetworkDefinition`` of the same network and box (the
``bench`` extra), for users who want OMLT's formulations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ValidationError
from ..solve import LinearModel, ModelBuilder
from ..solve.model import iter_names
from .bounds import Bounds, compute_bounds
from .formulate import NetBuilder, Region, add_network, check_relu_formulation
from .network import Network, as_network

__all__ = ["NetworkBlock", "network_block_model", "add_network_block", "append_network_block",
           "add_network_to_pyomo", "to_omlt"]


@dataclass
class NetworkBlock:
    """Where a network sits in the host model: the column of each named input and
    output, the first and last column of the block, its bounds and sizes."""

    network: Network
    name: str
    inputs: dict[str, int]
    outputs: dict[str, int]
    first_column: int
    num_columns: int
    num_rows: int
    bounds: Bounds
    stats: dict[str, Any] = field(default_factory=dict)
    cols: Any = field(default=None, repr=False)  # formulate.NetCols, in host columns

    def lift(self, solution: np.ndarray, x: np.ndarray) -> None:
        """Set the block's columns of ``solution`` to the network's forward pass at the
        input ``x`` (every block row then holds; ``heuristics.lift_network``)."""
        from .heuristics import lift_network

        lift_network(solution, self.network, self.cols, np.asarray(x, dtype=np.float64))

    @property
    def input_columns(self) -> np.ndarray:
        return np.fromiter(self.inputs.values(), dtype=np.int64)

    @property
    def output_columns(self) -> np.ndarray:
        return np.fromiter(self.outputs.values(), dtype=np.int64)

    def forward_error(self, solution: np.ndarray) -> float:
        """max |y - f(x)| at a host solution (a value per host column)."""
        v = np.asarray(solution, dtype=np.float64)
        return float(np.max(np.abs(v[self.output_columns]
                                   - self.network.forward(v[self.input_columns]))))


def _names(names: Sequence[str], size: int, what: str, block: str) -> list[str]:
    names = [str(n) for n in names] if not isinstance(names, str) else [names]
    if len(names) != size:
        raise ValidationError(
            f"The network of block {block!r} has {size} {what}s, but {len(names)} {what} "
            f"name(s) were given ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); "
            f"give one name per {what}, in the network's order.")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValidationError(f"The {what} names of block {block!r} must be distinct; "
                              f"{', '.join(map(repr, dup))} repeat(s).")
    return names


def _box_from_mapping(names: list[str], input_bounds: Mapping, block: str
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) from {name: (lo, hi)}, which must name every input and no other."""
    missing = [nm for nm in names if nm not in input_bounds]
    unknown = [k for k in input_bounds if k not in names]
    if missing or unknown:
        raise ValidationError(
            f"The input bounds of block {block!r} must name every input exactly: "
            + (f"missing {', '.join(map(repr, missing[:6]))}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown {', '.join(map(repr, unknown[:6]))}" if unknown else "")
            + f". The inputs are {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}.")
    pairs = [input_bounds[nm] for nm in names]
    try:
        return (np.array([float(p[0]) for p in pairs]), np.array([float(p[1]) for p in pairs]))
    except (TypeError, ValueError, IndexError) as exc:
        raise ValidationError(f"Each input bound of block {block!r} must be a pair "
                              "(lower, upper) of numbers.") from exc


def _box_from_pair(n: int, input_bounds: Any, block: str) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) from a pair of scalars or length-``n`` arrays."""
    try:
        lo_raw, hi_raw = input_bounds
        return (np.broadcast_to(np.asarray(lo_raw, dtype=np.float64), (n,)).copy(),
                np.broadcast_to(np.asarray(hi_raw, dtype=np.float64), (n,)).copy())
    except (TypeError, ValueError) as exc:
        raise ValidationError(
            f"The input bounds of block {block!r} must be a mapping name -> (lower, upper) "
            f"or a pair (lower, upper) of scalars or length-{n} arrays.") from exc


def _check_box(names: list[str], lo: np.ndarray, hi: np.ndarray, block: str) -> None:
    """Every bound finite (a network is exact in a MIP only over a bounded domain) and
    lower <= upper."""
    n = len(names)
    bad = [i for i in range(n) if np.isnan(lo[i]) or np.isnan(hi[i]) or not math.isfinite(lo[i])
           or not math.isfinite(hi[i])]
    if bad:
        i = bad[0]
        raise ValidationError(
            f"The input {names[i]!r} of block {block!r} needs finite bounds; got "
            f"({lo[i]:g}, {hi[i]:g})" + (f" ({len(bad)} inputs in all)" if len(bad) > 1 else "")
            + ". A network is exact in a MIP only over a bounded input domain: give the "
            "range the variable can take (e.g. the training data's range).")
    crossed = [i for i in range(n) if lo[i] > hi[i]]
    if crossed:
        i = crossed[0]
        raise ValidationError(f"The input {names[i]!r} of block {block!r} has lower bound "
                              f"{lo[i]:g} > upper bound {hi[i]:g}.")


def _box(names: list[str], input_bounds: Any, block: str) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) per input from a {name: (lo, hi)} mapping or a (lo, hi) pair."""
    if isinstance(input_bounds, Mapping):
        lo, hi = _box_from_mapping(names, input_bounds, block)
    else:
        lo, hi = _box_from_pair(len(names), input_bounds, block)
    _check_box(names, lo, hi, block)
    return lo, hi


def network_block_model(network: Any, input_names: Sequence[str], output_names: Sequence[str],
                        input_bounds: Any, *, bounds: str = "symbolic", relu: str = "bigm",
                        max_fan_in: int | None = None, name: str = "nn",
                        input_shape: Any = None) -> tuple[LinearModel, NetworkBlock]:
    """The block alone as a LinearModel (objective 0) and its NetworkBlock (columns
    numbered from 0); ``add_network_block`` / ``append_network_block`` place it."""
    net = as_network(network, input_shape)
    ins = _names(input_names, net.input_dim, "input", name)
    outs = _names(output_names, net.output_dim, "output", name)
    check_relu_formulation(relu, max_fan_in)
    lo, hi = _box(ins, input_bounds, name)
    half = 0.5 * (hi - lo)
    region = Region(lo + half, "linf", float(max(half.max(), 1e-12)), lo, hi)
    b = compute_bounds(net, region, bounds)
    builder = NetBuilder(name=name, sense="max")
    cols = add_network(builder, net, region, b.lower, b.upper, relu=relu, max_fan_in=max_fan_in)
    model = builder.build()
    out_cols = np.asarray(cols.h[-1])
    cnames = [f"{name}.{c}" for c in iter_names(model.col_names, model.num_cols, "x")]
    for nm, j in zip(ins, cols.x):
        cnames[int(j)] = f"{name}.{nm}"
    for nm, j in zip(outs, out_cols):
        cnames[int(j)] = f"{name}.{nm}"
    model.col_names = cnames
    model.row_names = [f"{name}.{r}" for r in iter_names(model.row_names, model.num_rows, "r")]
    block = NetworkBlock(
        network=net, name=name, inputs=dict(zip(ins, map(int, cols.x))),
        outputs=dict(zip(outs, map(int, out_cols))), first_column=0,
        num_columns=model.num_cols, num_rows=model.num_rows, bounds=b, cols=cols,
        stats={"binaries": model.num_integer, "bounds_method": b.method,
               "bounds_time_s": b.time_s, "per_layer": b.report(net),
               "output_lower": b.lower[-1].tolist(), "output_upper": b.upper[-1].tolist()})
    return model, block


def _shift(block: NetworkBlock, off: int) -> NetworkBlock:
    from dataclasses import replace as dc_replace

    def sh(a: np.ndarray) -> np.ndarray:
        return np.where(a >= 0, a + off, a)

    block.inputs = {k: v + off for k, v in block.inputs.items()}
    block.outputs = {k: v + off for k, v in block.outputs.items()}
    block.first_column = off
    c = block.cols
    block.cols = dc_replace(c, x=c.x + off, z=[sh(a) for a in c.z], h=[sh(a) for a in c.h],
                            s=[sh(a) for a in c.s])
    return block


def add_network_block(builder: ModelBuilder, network: Any, input_names: Sequence[str],
                      output_names: Sequence[str], input_bounds: Any, **kwargs: Any
                      ) -> NetworkBlock:
    """Add the network to the user's ``builder`` (module docstring); returns where its
    named inputs and outputs are. ``kwargs``: ``network_block_model``'s."""
    model, block = network_block_model(network, input_names, output_names, input_bounds,
                                       **kwargs)
    off = int(builder.add_columns(model.num_cols, lower=model.col_lower, upper=model.col_upper,
                                  integer=model.integrality, names=model.col_names)[0]) \
        if model.num_cols else builder.n
    coo = model.A.tocoo()
    builder.add_rows(coo.row, coo.col + off, coo.data, model.row_lower, model.row_upper,
                     count=model.num_rows, names=model.row_names)
    return _shift(block, off)


def append_network_block(host: LinearModel, network: Any, input_names: Sequence[str],
                         output_names: Sequence[str], input_bounds: Any, **kwargs: Any
                         ) -> tuple[LinearModel, NetworkBlock]:
    """``host`` with the network appended (a new LinearModel; the block's columns have
    cost 0) and where its named inputs and outputs are."""
    import scipy.sparse as sp

    model, block = network_block_model(network, input_names, output_names, input_bounds,
                                       **kwargs)
    off = host.num_cols
    A = sp.bmat([[host.A, None], [None, model.A]], format="csc")
    names = None
    if host.col_names is not None:
        names = list(host.col_names) + iter_names(model.col_names, model.num_cols, "x")
    rnames = None
    if host.row_names is not None:
        rnames = list(host.row_names) + iter_names(model.row_names, model.num_rows, "r")
    out = LinearModel(
        c=np.r_[host.c, np.zeros(model.num_cols)], A=A,
        row_lower=np.r_[host.row_lower, model.row_lower],
        row_upper=np.r_[host.row_upper, model.row_upper],
        col_lower=np.r_[host.col_lower, model.col_lower],
        col_upper=np.r_[host.col_upper, model.col_upper],
        integrality=np.r_[host.integrality, model.integrality], sense=host.sense,
        offset=host.offset, col_names=names, row_names=rnames, name=host.name,
        metadata=dict(host.metadata))
    return out, _shift(block, off)


def add_network_to_pyomo(model: Any, name: str, network: Any, input_names: Sequence[str],
                         output_names: Sequence[str], input_bounds: Any, **kwargs: Any) -> Any:
    """Add the network to the Pyomo ``model`` as the block ``model.<name>`` with
    ``inputs[NAME]`` and ``outputs[NAME]`` (Pyomo References to its variables); the
    NetworkBlock (columns of ``block.x``) is ``block.optprune``."""
    import pyomo.environ as pe

    from ..solve.backends.pyomo_backend import to_pyomo

    if model.component(name) is not None:
        raise ValidationError(f"The Pyomo model already has a component {name!r}; choose "
                              "another block name.")
    lm, block = network_block_model(network, input_names, output_names, input_bounds,
                                    name=name, **kwargs)
    blk = to_pyomo(lm)
    blk.del_component(blk.obj)  # the host model has the objective
    setattr(model, name, blk)
    blk.inputs = pe.Reference({k: blk.x[j] for k, j in block.inputs.items()})
    blk.outputs = pe.Reference({k: blk.x[j] for k, j in block.outputs.items()})
    blk.optprune = block
    return blk


def to_omlt(network: Any, input_bounds: Any, input_shape: Any = None) -> Any:
    """OMLT's ``NetworkDefinition`` of ``network`` over the box ``input_bounds`` (a pair
    (lower, upper) of scalars or arrays), with dense layers and ReLU / linear
    activations as in optprune's Network (the ``bench`` extra)."""
    from .._extras import require

    require("omlt", "bench", "converting a network to OMLT")
    from omlt.neuralnet import NetworkDefinition
    from omlt.neuralnet.layer import DenseLayer, InputLayer, Layer

    net = as_network(network, input_shape)
    names = [f"x{i}" for i in range(net.input_dim)]
    lo, hi = _box(names, input_bounds, "omlt")
    nd = NetworkDefinition(scaled_input_bounds={i: (float(lo[i]), float(hi[i]))
                                                for i in range(net.input_dim)})
    prev: Layer = InputLayer([net.input_dim])
    nd.add_layer(prev)
    for L in net.layers:
        layer = DenseLayer(prev.output_size, [L.out_features], L.W.T.copy(), L.b.copy(),
                           activation="relu" if L.relu else "linear")
        nd.add_layer(layer)
        nd.add_edge(prev, layer)
        prev = layer
    return nd
