"""Run one GEMM through SCALE-Sim (PyPI ``scalesim``, optional) for the cross-check.

Notes from running SCALE-Sim 3.0.0 (formulations/systolic.md, section 5): it fails with
numpy 2.4 and works with numpy 2.3.x, so run it in its own environment; GEMM
topology rows must end with a trailing comma (``Layer, M, N, K,``); a layout CSV is
required even with custom layouts off (a header-only file works); every config
section must be present; ``get_total_cycles()`` is broken, so the cycles are read
from ``COMPUTE_REPORT.csv``, which counts from 0 (one less than
:func:`optprune.hw.systolic.gemm_cycles`). This module is not exercised where
``scalesim`` is absent (the test that uses it is marked slow and skips).
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from .._extras import require
from .systolic import check_dataflow

__all__ = ["scalesim_cycles"]

_CFG = """[general]
run_name = optprune_check

[architecture_presets]
ArrayHeight: {R}
ArrayWidth: {C}
IfmapSramSzkB: 1024
FilterSramSzkB: 1024
OfmapSramSzkB: 1024
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Bandwidth: 10
Dataflow: {d}
MemoryBanks: 1
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""


def scalesim_cycles(M: int, K: int, N: int, rows: int, cols: int, dataflow: str) -> int:
    """SCALE-Sim's compute cycles ("Total Cycles" of COMPUTE_REPORT.csv) of one GEMM
    of inputs M x K and weights K x N."""
    d = check_dataflow(dataflow)
    mod = require("scalesim.scale_sim", purpose="the SCALE-Sim cross-check")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "scale.cfg").write_text(_CFG.format(R=rows, C=cols, d=d))
        (t / "gemm.csv").write_text(f"Layer, M, N, K,\nL0, {M}, {N}, {K},\n")
        (t / "layout.csv").write_text("Layer name, IFMAP Height Intraline Factor, "
                                      "IFMAP Width Intraline Factor, Filter Height Intraline "
                                      "Factor, Filter Width Intraline Factor, Channel Intraline "
                                      "Factor, Num Filter Intraline Factor,\n")
        sim = mod.scalesim(save_disk_space=True, verbose=False, config=str(t / "scale.cfg"),
                           topology=str(t / "gemm.csv"), layout=str(t / "layout.csv"),
                           input_type_gemm=True)
        sim.run_scale(top_path=str(t / "out"))
        report = next((t / "out").rglob("COMPUTE_REPORT.csv"))
        with report.open() as f:
            rows_ = [r for r in csv.reader(f) if r and r[0].strip()]
        header = [h.strip() for h in rows_[0]]
        return int(float(rows_[1][header.index("Total Cycles")]))
