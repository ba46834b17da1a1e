"""``optprune gates`` and ``optprune progressive`` with tiny step counts: the printed
numbers are the real ones (they match the JSON report and the saved model), the exact
mask meets its budget, and bad input exits with code 2 and a clear message."""

from __future__ import annotations

import json
import re

import pytest
import torch

from optprune.cli import main
from optprune.experiments import accuracy, load_digits_split, load_vit

pytest.importorskip("peft")

NUM = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def grab(pattern: str, text: str) -> tuple[str, ...]:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in output:\n{text}"
    return m.groups()


def test_gates_prints_real_masks_and_proof(tmp_path, capsys):
    out, rep = tmp_path / "vit.pt", tmp_path / "r.json"
    assert main(["gates", "--target", "0.3", "--steps", "30", "--epochs", "2", "--out",
                 str(out), "--json", str(rep)]) == 0
    text = capsys.readouterr().out
    r = json.loads(rep.read_text())
    s_exact, kept, dense, acc = grab(rf"exact allocation: sparsity {NUM} \((\d+) of (\d+) params "
                                     rf"kept.*test accuracy {NUM}", text)
    ev = r["masks"]["exact_allocation"]
    assert float(s_exact) >= 0.3 - 5e-5 and ev["sparsity"] >= 0.3
    assert int(kept) == ev["params"] <= 0.7 * int(dense)
    assert abs(float(acc) - ev["accuracy"]) < 5e-5
    s_own, = grab(rf"own rounding: +sparsity {NUM}", text)
    assert abs(float(s_own) - r["masks"]["own_rounding"]["sparsity"]) < 5e-5
    es, = grab(rf"E\[s\] at the end {NUM}", text)
    assert abs(float(es) - r["expected_sparsity_end"]) < 5e-5
    term, obj, bound, gap = grab(rf"solver: (\w+), objective {NUM}, bound {NUM}, gap {NUM}", text)
    assert term == "optimal" and float(gap) <= 1e-6
    assert abs(float(obj) - float(bound)) <= 1e-5 * max(1.0, abs(float(bound)))
    # the saved model is the exact-allocation one: same size, same test accuracy
    vit = load_vit(out)
    assert sum(p.numel() for p in vit.parameters()) == ev["params"]
    d = load_digits_split(seed=0)
    assert accuracy(vit, d.x_test, d.y_test) == pytest.approx(ev["accuracy"], abs=1e-9)


def test_progressive_prints_plan_params_and_accuracy(tmp_path, capsys):
    out, rep = tmp_path / "vit.pt", tmp_path / "r.json"
    assert main(["progressive", "--reduction", "0.3", "--period", "10", "--recovery", "5",
                 "--epochs", "2", "--one-shot", "--out", str(out), "--json", str(rep)]) == 0
    text = capsys.readouterr().out
    r = json.loads(rep.read_text())
    n_rm, n_all = map(int, grab(r"plan: remove (\d+) of (\d+) groups", text))
    assert n_rm == len(r["removed_ids"]) and 0 < n_rm < n_all
    pred, dense = map(int, grab(r"kept params (\d+) of (\d+)", text))
    assert pred <= 0.7 * dense
    first, last = grab(rf"removed-entry norm {NUM} after the first step, {NUM} after the last",
                       text)
    assert float(first) > 0 and float(last) == 0.0
    params, acc = grab(rf"progressive:.*params (\d+) of \d+.*test accuracy {NUM}", text)
    assert int(params) == pred == r["progressive"]["params"]
    assert abs(float(acc) - r["progressive_accuracy"]) < 5e-5
    one, = grab(rf"one-shot:.*test accuracy {NUM}", text)
    assert abs(float(one) - r["one_shot_accuracy"]) < 5e-5
    vit = load_vit(out)
    d = load_digits_split(seed=0)
    assert sum(p.numel() for p in vit.parameters()) == pred
    assert accuracy(vit, d.x_test, d.y_test) == pytest.approx(r["progressive_accuracy"], abs=1e-9)


def test_progressive_with_lora(capsys):
    assert main(["progressive", "--reduction", "0.2", "--period", "5", "--recovery", "0",
                 "--epochs", "1", "--lora", "2"]) == 0
    text = capsys.readouterr().out
    assert "LoRA rank 2 on q, v" in text
    _first, last = grab(rf"norm {NUM} after the first step, {NUM} after the last", text)
    assert float(last) == 0.0


@pytest.mark.parametrize("argv, needle", [
    (["gates", "--target", "1.5"], "'--target' of optprune gates must be in (0, 0.9"),
    (["gates", "--target", "0.999"], "the most the gates can remove"),
    (["gates", "--target", "nan"], "'--target'"),
    (["gates", "--steps", "-1"], "'--steps' of optprune gates must be a positive integer"),
    (["gates", "--steps", "10", "--warmup", "20"], "at most --steps (10)"),
    (["progressive", "--reduction", "0.95"], "the most removable with --protect 0.1"),
    (["progressive", "--reduction", "0"], "'--reduction' of optprune progressive"),
    (["progressive", "--period", "0"], "'--period' of optprune progressive"),
    (["progressive", "--recovery", "-2"], "'--recovery'"),
    (["progressive", "--protect", "1.0"], "'--protect'"),
    (["progressive", "--out", "/no/such/dir/vit.pt"], "a file path in an existing directory"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"optprune {argv[0]}: error: ") and needle in err
