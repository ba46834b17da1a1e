"""Problem files round-trip; the command line solves them, reports JSON, and
fails with one clear message (and no output file) on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from optprune.alloc import AllocationProblem, allocate
from optprune.cli import main
from optprune.errors import ValidationError


def small_problem() -> AllocationProblem:
    rng = np.random.default_rng(3)
    layer = [f"l{i // 8}" for i in range(32)]
    kind = ["head" if (i % 8) < 4 else "ffn" for i in range(32)]
    p = AllocationProblem(None, layer, kind, rng.random(32),
                          {"params": np.where(np.array(kind) == "head", 4.0, 2.0),
                           "flops": rng.integers(1, 5, 32).astype(float)},
                          fixed_costs={"params": 10})
    p.add_budget("params", max=0.6, relative=True)
    p.add_multiple(None, "head", 2)
    p.add_count_bounds(None, "ffn", min=1)
    p.add_implication("l0:head:0", "l0:ffn:0")
    p.add_group(["l1:ffn:0", "l1:ffn:1"])
    p.add_equal_counts([("l2", "head"), ("l3", "head")])
    for s, idx in p.slots().items():
        p.add_latency_table(s[0], s[1], 1.0 + np.ceil(np.arange(idx.size + 1) / 2))
    p.add_latency_cap(0.8, relative=True)
    return p


def test_json_round_trip_keeps_the_optimum(tmp_path):
    p = small_problem()
    path = p.write_json(tmp_path / "p.json")
    q = AllocationProblem.read_json(path)
    assert q.to_dict() == p.to_dict()
    assert allocate(q, baselines=False).solve.objective == pytest.approx(
        allocate(p, baselines=False).solve.objective)


def test_document_errors_name_the_path(tmp_path):
    d = small_problem().to_dict()
    d["structures"]["score"][5] = "high"
    with pytest.raises(ValidationError, match="structures/score"):
        AllocationProblem.from_dict(d)
    d = small_problem().to_dict()
    d["constraints"]["budgets"][0]["max"] = -1
    with pytest.raises(ValidationError, match="budgets"):
        AllocationProblem.from_dict(d)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        AllocationProblem.read_json(bad)


def test_cli_solves_a_file_and_writes_kept_ids(tmp_path, capsys):
    path = small_problem().write_json(tmp_path / "p.json")
    out = tmp_path / "res.json"
    assert main(["allocate", str(path), "--json", "--out", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["termination"] == "optimal" and d["gap"] <= 1e-6
    full = json.loads(out.read_text())
    p = AllocationProblem.read_json(path)
    keep = np.isin(p.ids, full["kept_ids"])
    assert p.violations(keep) == []
    assert p.retained(keep) == pytest.approx(d["objective"])


def test_cli_example_with_pareto(capsys):
    assert main(["allocate", "--example", "llama-7b", "--no-baselines", "--json",
                 "--pareto", "params:0.4,0.5,0.6"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["pareto"]["resource"] == "params"
    objs = [pt["objective"] for pt in d["pareto"]["points"]]
    assert objs == sorted(objs)


def test_cli_bad_input_fails_cleanly_without_output(tmp_path, capsys):
    d = small_problem().to_dict()
    d["constraints"]["budgets"][0]["max"] = 1e-9  # nothing fits
    d["constraints"]["count_bounds"][0]["min"] = 2
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    out = tmp_path / "res.json"
    assert main(["allocate", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "optprune allocate: error:" in err
    assert not out.exists()
    assert main(["allocate", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    path2 = small_problem().write_json(tmp_path / "ok.json")
    assert main(["allocate", str(path2), "--backend", "gurobi", "--out", str(out)]) == 2
    assert "gurobi" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "optprune.cli", "backends", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert all(d[b]["available"] for b in ("highs", "cpsat", "scip", "pyomo"))


def _bad_documents(d: dict) -> dict[str, bytes]:
    """Files the command must refuse with one line: numbers outside the usable
    range (a 400-digit integer, 1e300 scores, a multiple of 1e30), nesting too deep
    to read, and a file that is not UTF-8."""
    text = json.dumps(d)
    at = text.index('"score": [') + len('"score": [')
    end = text.index(",", at)
    huge = d | {"structures": d["structures"] | {"score": [1e300] * len(d["structures"]["ids"])}}
    mult = json.loads(text)
    mult["constraints"]["multiples"] = [{"layer": "l0", "kind": "head", "multiple": 1e30}]
    return {
        "400-digit score": (text[:at] + "1" + "0" * 400 + text[end:]).encode(),
        "1e300 scores": json.dumps(huge).encode(),
        "multiple 1e30": json.dumps(mult).encode(),
        "deep nesting": b"[" * 100_000 + b"]" * 100_000,
        "latin-1": text.replace('"allocation"', '"allocati\u00f3n"').encode("latin-1"),
    }


@pytest.mark.parametrize("case", ["400-digit score", "1e300 scores", "multiple 1e30",
                                  "deep nesting", "latin-1"])
def test_unreadable_or_out_of_range_files_fail_in_one_line(tmp_path, capsys, case):
    path = tmp_path / "p.json"
    path.write_bytes(_bad_documents(small_problem().to_dict())[case])
    out = tmp_path / "res.json"
    assert main(["allocate", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optprune allocate: error:") and err.count("\n") == 1, err
    assert not out.exists()
    if case in ("400-digit score", "1e300 scores"):
        assert "Rescale" in err and "1000000000000000" in err  # the usable range and the fix


@pytest.mark.parametrize("where", ["directory", "missing directory"])
def test_an_unwritable_out_path_fails_before_the_solve(tmp_path, capsys, monkeypatch, where):
    import optprune.alloc.engine as engine

    def never(*a, **k):
        raise AssertionError("solved although the output path cannot be written")

    monkeypatch.setattr(engine, "allocate", never)
    path = small_problem().write_json(tmp_path / "p.json")
    out = tmp_path if where == "directory" else tmp_path / "no" / "res.json"
    assert main(["allocate", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optprune allocate: error: --out") and err.count("\n") == 1, err


def test_cpsat_refuses_numbers_beyond_64_bits_in_one_line(tmp_path, capsys):
    """Scores within the usable range whose scaled integers overflow CP-SAT's 64
    bits: refused with the scale named (HiGHS solves the same file)."""
    p = small_problem()
    p.score = np.arange(p.n) * 1e13 + 0.123456
    path = p.write_json(tmp_path / "p.json")
    out = tmp_path / "res.json"
    assert main(["allocate", str(path), "--backend", "cpsat", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optprune allocate: error: The 'cpsat' backend") and "scaled by 1e+06" in err
    assert not out.exists()
    assert main(["allocate", str(path), "--out", str(out)]) == 0
    assert out.exists()


def test_concurrent_writers_of_one_path_all_succeed(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from optprune.solve.model import write_json_atomic

    target = tmp_path / "res.json"
    docs = [{"writer": i, "payload": list(range(2000))} for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda d: write_json_atomic(target, d), docs))
    assert json.loads(target.read_text()) in docs  # whole, from one writer
    assert [f.name for f in tmp_path.iterdir()] == ["res.json"]  # no temporary left


def test_cli_runs_every_example_builder_and_says_when_nothing_was_found(capsys):
    assert main(["allocate", "--example", "unequal-20k", "--no-baselines", "--json",
                 "--time-limit", "30"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["problem"] == "unequal-20000" and d["objective"] is not None
    assert d["bound"] >= d["objective"]
    assert main(["allocate", "--example", "resnet-18", "--gqa-implications"]) == 2
    assert "LLaMA" in capsys.readouterr().err
    assert main(["allocate", "--example", "llama-70b", "--time-limit", "1e-6"]) == 0
    out = capsys.readouterr().out
    assert "objective -" in out and "no feasible selection found" in out
