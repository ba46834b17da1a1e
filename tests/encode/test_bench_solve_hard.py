"""benchmarks/bench_solve_hard.py: the consistency check of the ablation (a wrong answer of
any variant is flagged) and a run of two variants on a tiny digits net, resumed."""

import json


def _rec(image, variant, solved, objective, bound):
    return {"key": f"a|i{image}|{variant}", "arch": "a", "seed": 0, "image": image,
            "variant": variant, "solved": solved, "objective": objective, "bound": bound}


def test_consistency_flags_every_answer_that_contradicts_a_proven_optimum(load_benchmark):
    consistent = load_benchmark("bench_solve_hard").consistent
    base = [_rec(0, "default", True, 1.0, 1.0), _rec(0, "lp", True, 1.0 + 1e-9, 1.0)]
    ok = [_rec(0, "bare", False, 0.5, 2.0), _rec(0, "cuts", False, None, None),
          _rec(1, "bare", False, 7.0, 8.0)]  # image 1: nothing proven
    assert consistent(base + ok) == [True] * 5
    for bad in (_rec(0, "pgd", False, 1.5, 2.0),   # incumbent above the optimum
                _rec(0, "pgd", False, 0.5, 0.8),   # bound below the optimum
                _rec(0, "scip", True, 1.1, 1.1)):  # another "optimum"
        flags = consistent(base + ok + [bad])
        assert flags[-1] is False
    # two proven optima that disagree: every record of that instance is suspect
    assert not any(consistent([*base, _rec(0, "scip", True, 1.1, 1.1)]))


def test_two_variants_on_a_tiny_net_agree_and_resume(load_benchmark, tmp_path, capsys):
    bench = load_benchmark("bench_solve_hard")
    out = tmp_path / "hard.jsonl"
    argv = ["--archs", "10x1", "--images", "0,1", "--variants", "bare,default",
            "--time-limit", "60", "--epochs", "5", "--out", str(out)]
    assert bench.main(argv) == 0
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(recs) == 4 and all(r["solved"] for r in recs)
    assert all(bench.consistent(recs))
    for r in recs:  # a positive optimum is an adversarial example that flips the class
        assert r["verified"] == (r["objective"] > 0)
    capsys.readouterr()
    assert bench.main(argv) == 0  # resumed: nothing solved again
    assert out.read_text().count("\n") == 4
    table = capsys.readouterr().out
    assert "| 64-10-10 | default | 2/2 |" in table and table.count("| yes |") == 2
