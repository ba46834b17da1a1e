"""benchmarks/bench_omlt.py: optprune's strategies and OMLT's formulation side by side on
one tiny digits net, every pair proving the same optimum."""

import json

import pytest


def test_strategies_side_by_side_with_omlt_prove_the_same_optimum(load_benchmark, tmp_path,
                                                                  capsys):
    pytest.importorskip("omlt")
    out = tmp_path / "omlt.json"
    rc = load_benchmark("bench_omlt").main([
        "--archs", "12x1", "--images", "0,1", "--bounds", "symbolic", "--strategy",
        "default,none", "--epochs", "5", "--time-limit", "60", "--json", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())
    assert len(row["records"]) == 2
    for r in row["records"]:
        assert set(r["op"]) == {"symbolic", "symbolic+none"}
        assert r["op"]["symbolic"]["prepare"] > 0.0  # the strategy ran (PGD start)
        assert r["op"]["symbolic+none"]["prepare"] == 0.0  # the bare model
        for v in ("symbolic", "symbolic+none"):
            assert r[v]["both_optimal"] and r[v]["agree"], r
            # a positive optimum is an adversarial example: its witness flips the class
            assert r["op"][v]["verified"] == (r["op"][v]["obj"] > 0), r
    table = capsys.readouterr().out
    rows = [ln for ln in table.splitlines() if ln.startswith("| 64-12-10 |")]
    assert [ln.split(" | ")[3] for ln in rows] == ["symbolic", "symbolic+none"]
    assert all("2/2 proven on both" in ln for ln in rows)


def test_unknown_strategy_is_a_usage_error(load_benchmark, capsys):
    with pytest.raises(SystemExit) as e:
        load_benchmark("bench_omlt").main(["--strategy", "default,fast"])
    assert e.value.code == 2
    assert "--strategy takes a list of 'default' and 'none'" in capsys.readouterr().err
