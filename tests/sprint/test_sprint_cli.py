"""`optprune sprint train | answer` end to end on a tiny model, and bad input."""

import json

import pytest
import torch

from optprune.cli import main

torch.set_num_threads(1)

TINY = ["--train-steps", "150", "--heads", "2,2", "--d-model", "16", "--head-dim", "8",
        "--max-steps", "3", "--questions", "80", "--selector-epochs", "3", "--n-pairs", "3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("sprint")
    assert main(["sprint", "train", "--out", str(d), *TINY]) == 0
    return d


def test_train_writes_model_selector_and_meta(trained):
    meta = json.loads((trained / "meta.json").read_text())
    assert meta["configurations"][:2] == ["dense", "L0H0"]
    assert len(meta["configurations"]) == 1 + 4 + 3
    assert (trained / "model.pt").exists() and (trained / "selector.pt").exists()


@pytest.mark.parametrize("backend", ["highs", "cpsat", "brute"])
def test_answer_prints_a_checked_vote(trained, capsys, backend):
    rc = main(["sprint", "answer", "--dir", str(trained), "3+4*2", "-n", "3",
               "--backend", backend, "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["correct_answer"] == (3 + 4) * 2 % 7
    assert len(out["candidates"]) == 3 and out["selection"]["optimal"]
    assert out["correct"] == (out["answer"] == out["correct_answer"])


def test_answer_text_lists_the_json_candidates(trained, capsys):
    argv = ["sprint", "answer", "--dir", str(trained), "3+4*2", "-n", "3"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    text = capsys.readouterr().out
    for c in out["candidates"]:
        a = c["answer"]
        assert (f"{c['configuration']:<12} p={c['predicted_accuracy']:.3f}  "
                f"answer {a if a >= 0 else 'malformed'}") in text
    assert f"majority answer {out['answer']}; correct answer {out['correct_answer']}" in text


def test_answer_objectives_agree_across_backends(trained, capsys):
    vals = []
    for backend in ("highs", "cpsat", "brute"):
        main(["sprint", "answer", "--dir", str(trained), "1-2+3", "-n", "4", "--lam", "1.0",
              "--backend", backend, "--json"])
        vals.append(json.loads(capsys.readouterr().out)["selection"]["objective"])
    assert max(vals) - min(vals) < 1e-3  # CP-SAT within its rounding bound at scale 1e4


def test_answer_with_a_restricted_pool(trained, capsys):
    rc = main(["sprint", "answer", "--dir", str(trained), "2*3", "-n", "2",
               "--configs", "dense,L1H0,L0H1", "--json"])
    assert rc == 0
    ids = {c["configuration"] for c in json.loads(capsys.readouterr().out)["candidates"]}
    assert ids <= {"dense", "L1H0", "L0H1"}


@pytest.mark.parametrize("argv,needle", [
    (["-n", "9"], "N (--n) must be in [1, 8]"),
    (["-n", "3", "--configs", "dense,L0H1"], "must be in [1, 2]"),
    (["--configs", "dense,L5H0,L0H9"], "Unknown configurations ['L5H0', 'L0H9']"),
    (["--configs", "dense,headX"], "L<layer>H<head>"),
])
def test_answer_bad_input(trained, capsys, argv, needle):
    rc = main(["sprint", "answer", "--dir", str(trained), "1+1", *argv])
    assert rc == 2
    assert needle in capsys.readouterr().err


def test_bad_question_and_missing_dir(trained, capsys, tmp_path):
    assert main(["sprint", "answer", "--dir", str(trained), "1+1+1+1+1"]) == 2
    assert "at most 3" in capsys.readouterr().err
    assert main(["sprint", "answer", "--dir", str(trained), "9+1"]) == 2
    assert "digit in [0, 6]" in capsys.readouterr().err
    assert main(["sprint", "answer", "--dir", str(tmp_path), "1+1"]) == 2
    assert "sprint train" in capsys.readouterr().err


def test_train_a_model_without_heads_fails_clearly(tmp_path, capsys):
    rc = main(["sprint", "train", "--out", str(tmp_path), "--heads", "0,0", "--d-model", "16",
               "--train-steps", "1"])
    assert rc == 2
    assert "at least one" in capsys.readouterr().err
