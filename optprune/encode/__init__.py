"""Pruned ReLU networks as adversarial-example MIPs (formulations/adversarial.md).

network.py: torch / scikit-learn / ONNX -> one float64 numpy Network;
bounds.py: interval, symbolic (back-substitution), LP and progressive (LP then MIP)
    pre-activation bounds;
formulate.py: big-M MIP with no binary for stable neurons (the ideal formulation for
    small fan-in as an option), built as sparse arrays;
attack.py: solve and verify every witness on the dense network in float64, with a
    Strategy (heuristics.py: PGD start; cuts.py: ideal cuts at the root);
block.py: a network as a block with named inputs and outputs in the user's own
    ModelBuilder, LinearModel or Pyomo model (constraint learning);
instances.py: .mps + .json instance files and the MANIFEST; bench.py: the benchmark runner;
prune.py: seeded digits MLPs, neuron pruning (layerwise or the exact allocation) and
    fine-tuning; cli.py: the commands.
"""

from .attack import NO_STRATEGY, AttackResult, Strategy, attack, solve_encoding
from .block import (
    NetworkBlock, add_network_block, add_network_to_pyomo, append_network_block, to_omlt,
)
from .bounds import Bounds, compute_bounds, interval_bounds, symbolic_bounds
from .formulate import AttackSpec, Encoding, Region, encode
from .network import Layer, Network, as_network, from_onnx, from_sklearn, from_torch, load_network

# 3: bounds rounded outward to 24 bits (portable files), LP bounds as cost vectors
GENERATOR_VERSION = "optprune.encode/3"

__all__ = [
    "AttackResult", "AttackSpec", "Bounds", "Encoding", "GENERATOR_VERSION", "Layer",
    "NO_STRATEGY", "Network", "NetworkBlock", "Strategy", "add_network_block",
    "add_network_to_pyomo", "append_network_block", "to_omlt",
    "Region", "as_network", "attack", "compute_bounds", "encode", "from_onnx", "from_sklearn",
    "from_torch", "interval_bounds", "load_network", "solve_encoding", "symbolic_bounds",
]
