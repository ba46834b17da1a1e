"""The main job at a tiny size: it runs, writes its report and plot, and every
exact row is a proven optimum that meets the budget."""

import json

from optprune.cli import main


def test_demo_tiny(tmp_path, capsys):
    assert main(["demo", "--tiny", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "accuracy_vs_params.png").stat().st_size > 10_000
    rows = rep["rows"]
    dense = {r["model"]: r for r in rows if r["method"] == "dense"}
    exact = [r for r in rows if r["selection"] == "exact" and r["params"] is not None]
    assert {r["model"] for r in exact} == {"mlp", "vit"}
    for r in exact:
        assert r["status"] == "optimal" and r["gap"] <= 1e-6
        assert r["params"] <= 0.5 * dense[r["model"]]["params"]
        assert r["flops"] <= 0.6 * dense[r["model"]]["flops"]
        assert 0.0 <= r["acc_finetuned"] <= 1.0
    # The default pipeline leads, and a rule that breaks a constraint is marked so.
    vit = [r for r in rows if r["model"] == "vit"]
    assert [r["method"] for r in vit[:2]] == ["dense", "optprune default"]
    for r in rows:
        if r["params"] is not None and r["method"] != "dense":
            assert r["feasible"] == (r["params"] <= 0.5 * dense[r["model"]]["params"]
                                     and r["flops"] <= 0.6 * dense[r["model"]]["flops"]
                                     and not r["violations"])
    out = capsys.readouterr().out
    assert "optimal" in out and "uniform" in out and "optprune default" in out


def test_the_demo_vit_is_the_kits_digits_vit():
    import torch

    from optprune.experiments import digits_vit
    from optprune.nn.demo import DemoConfig, demo_vit

    for seed in (0, 3):
        ours, kit = demo_vit(DemoConfig(seed=seed)).state_dict(), digits_vit(seed).state_dict()
        assert ours.keys() == kit.keys()
        assert all(torch.equal(ours[k], kit[k]) for k in ours)
    tiny = demo_vit(DemoConfig.tiny())
    assert sum(p.numel() for p in tiny.parameters()) < sum(
        p.numel() for p in digits_vit(0).parameters())
