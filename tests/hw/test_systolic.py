"""The closed-form cycle model equals the cycle-stepped reference simulation."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optprune.cli import main
from optprune.errors import ValidationError
from optprune.hw.refsim import simulate_gemm
from optprune.hw.systolic import gemm_cost, gemm_cycles, parse_array

DATAFLOWS = ["os", "ws", "is"]


def _check_against_sim(M, K, N, R, C, d, seed=0):
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((M, K)), rng.standard_normal((K, N))
    sim = simulate_gemm(A, B, R, C, d)
    cost = gemm_cost(M, K, N, (R, C), d)
    np.testing.assert_allclose(sim.output, A @ B, rtol=1e-12, atol=1e-12)
    assert sim.cycles == cost.cycles == gemm_cycles(M, K, N, (R, C), d)
    assert sim.folds_run == cost.folds
    assert sim.sram_reads == cost.sram_reads
    assert sim.sram_writes == cost.sram_writes
    assert sim.useful_macs == cost.macs == M * K * N
    assert math.isclose(sim.utilization, cost.utilization, rel_tol=1e-12)


@pytest.mark.parametrize("d", DATAFLOWS)
def test_formulas_equal_simulation_on_a_grid_of_small_shapes(d):
    n = 0
    for R, C in [(1, 1), (2, 3), (3, 2), (4, 4)]:
        for M in (1, 2, 5):
            for K in (1, 3, 6):
                for N in (1, 4, 7):
                    _check_against_sim(M, K, N, R, C, d, seed=n)
                    n += 1
    assert n == 108


@settings(max_examples=60, deadline=None)
@given(M=st.integers(1, 9), K=st.integers(1, 9), N=st.integers(1, 9), R=st.integers(1, 5),
       C=st.integers(1, 5), d=st.sampled_from(DATAFLOWS))
def test_formulas_equal_simulation_random_shapes(M, K, N, R, C, d):
    _check_against_sim(M, K, N, R, C, d)


def test_known_values_from_the_scalesim_formulas():
    # ws: ceil(64/8) * ceil(128/8) folds of 2*8 + 8 + 17 - 2 cycles
    assert gemm_cycles(17, 64, 128, "8x8", "ws") == 8 * 16 * 39
    # os: ceil(17/8) * ceil(128/8) folds of 8 + 8 + 64 - 2 cycles
    assert gemm_cycles(17, 64, 128, "8x8", "os") == 3 * 16 * 78
    # is: Sr = K, Sc = M, T = N
    assert gemm_cycles(17, 64, 128, "8x8", "is") == 8 * 3 * (16 + 8 + 128 - 2)


@pytest.mark.parametrize("d", DATAFLOWS)
@pytest.mark.parametrize("dim", ["M", "K", "N"])
def test_staircase_constant_between_multiples_and_dropping_at_them(d, dim):
    R, C = 8, 4
    base = {"M": 20, "K": 24, "N": 16}
    ws = np.arange(1, 65)
    args = {k: (ws if k == dim else np.full(ws.size, v)) for k, v in base.items()}
    cyc = gemm_cycles(args["M"], args["K"], args["N"], (R, C), d)
    assert np.all(np.diff(cyc) >= 0), "latency never falls when a dimension grows"
    # the dimension on the array's rows steps at multiples of R, on its cols at multiples
    # of C; the streamed one grows every cycle (no staircase in time)
    role = {"os": {"M": "r", "N": "c", "K": "t"}, "ws": {"K": "r", "N": "c", "M": "t"},
            "is": {"K": "r", "M": "c", "N": "t"}}[d][dim]
    if role == "t":
        assert np.all(np.diff(cyc) > 0)
        return
    step = R if role == "r" else C
    for w in ws[:-1]:
        same = (w % step) != 0  # inside a tread: one more does not cost
        assert (cyc[w] == cyc[w - 1]) == same, (w, cyc[w - 1], cyc[w])


def test_bandwidth_stalls():
    free = gemm_cost(17, 64, 128, "8x8", "os")
    assert free.stall_cycles == 0 and free.total_cycles == free.cycles
    big = gemm_cost(17, 64, 128, "8x8", "os", bandwidth_words_per_cycle=1e9)
    assert big.stall_cycles == 0
    prev = None
    for bw in (64, 16, 4, 1):
        c = gemm_cost(17, 64, 128, "8x8", "os", bandwidth_words_per_cycle=bw)
        if prev is not None:
            assert c.total_cycles >= prev
        prev = c.total_cycles
    # at one word per cycle every word moved is a cycle: total = sum of per-fold traffic
    c = gemm_cost(17, 64, 128, "8x8", "os", bandwidth_words_per_cycle=1)
    assert c.total_cycles == c.sram_reads + c.sram_writes


def test_tile_skipping_in_simulation_equals_masked_matmul():
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((5, 7)), rng.standard_normal((7, 9))
    skip = rng.random((4, 3)) < 0.4  # folds of a 2x3 array over K=7, N=9
    sim = simulate_gemm(A, B, 2, 3, "ws", skip=skip)
    mask = np.kron(~skip, np.ones((2, 3)))[:7, :9]
    np.testing.assert_allclose(sim.output, A @ (B * mask), atol=1e-12)
    assert sim.cycles == int((~skip).sum()) * (2 * 2 + 3 + 5 - 2)


@pytest.mark.parametrize("bad", [(0, 3, 4), (3, -1, 4), (3, 4, 0), (2.5, 3, 4)])
def test_bad_dimensions(bad):
    with pytest.raises(ValidationError, match="GEMM dimension"):
        gemm_cost(*bad, "4x4", "ws")
    with pytest.raises(ValidationError, match="GEMM dimension"):
        gemm_cycles(*bad, "4x4", "ws")


@pytest.mark.parametrize("spec", ["0x4", "4x-1", "4by4", "", (0, 4), True, 2.5])
def test_bad_arrays(spec):
    with pytest.raises(ValidationError, match="array"):
        parse_array(spec)


def test_unknown_dataflow():
    with pytest.raises(ValidationError, match="dataflow.*'os'"):
        gemm_cost(4, 4, 4, "4x4", "rs")
    with pytest.raises(ValidationError):
        simulate_gemm(np.ones((2, 2)), np.ones((2, 2)), 2, 2, "rs")


def test_bad_bandwidth():
    with pytest.raises(ValidationError, match="bandwidth"):
        gemm_cost(4, 4, 4, "4x4", "os", bandwidth_words_per_cycle=0)


def test_cli_cycles_json(capsys):
    assert main(["systolic", "cycles", "--array", "8x8", "--dataflow", "ws", "--gemm", "17", "64",
                 "128", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    c = gemm_cost(17, 64, 128, "8x8", "ws")
    for key in ("cycles", "folds", "utilization", "sram_reads", "sram_writes"):
        assert d[key] == getattr(c, key)
    assert d["cycles"] == 4992


def test_cli_cycles_text_and_errors(capsys):
    assert main(["systolic", "cycles", "--array", "4x8", "--dataflow", "is", "--gemm", "3", "5",
                 "7", "--bandwidth", "2"]) == 0
    out = capsys.readouterr().out
    assert "cycles" in out and "sram_reads" in out and "stall cycles" in out
    assert main(["systolic", "cycles", "--array", "8x8", "--dataflow", "xs", "--gemm", "1", "2",
                 "3"]) == 2
    assert "dataflow" in capsys.readouterr().err
    assert main(["systolic", "cycles", "--array", "8", "--dataflow", "os", "--gemm", "0", "2",
                 "3"]) == 2
    assert "positive integer" in capsys.readouterr().err


@pytest.mark.slow
def test_scalesim_cross_check():
    """SCALE-Sim's compute report (counting from 0) is our cycles - 1 on the same GEMMs."""
    pytest.importorskip("scalesim", reason="SCALE-Sim (PyPI 'scalesim') is not installed here; "
                        "it needs numpy < 2.4, so run this in its own environment")
    from optprune.hw.scalesim_bridge import scalesim_cycles

    for M, K, N, d in [(16, 32, 24, "ws"), (20, 8, 12, "os"), (9, 16, 32, "is")]:
        assert scalesim_cycles(M, K, N, 8, 8, d) == gemm_cycles(M, K, N, "8x8", d) - 1


def test_cycle_model_and_cli_module_do_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, optprune.hw, optprune.hw.systolic, optprune.hw.refsim, optprune.hw.cli; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
