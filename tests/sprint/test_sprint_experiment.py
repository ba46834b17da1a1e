"""The best-of-N experiment on a tiny model: structure and relations that must hold."""

import numpy as np
import torch

from optprune.sprint.experiment import METHODS, ExperimentConfig, markdown_table, run_experiment

torch.set_num_threads(1)


def test_tiny_experiment_relations(tmp_path):
    cfg = ExperimentConfig(heads=(2, 2), d_model=16, head_dim=8, d_ff=32, max_steps=3,
                           train_steps=150, schedule_steps=150, n_pairs=3,
                           n_train_questions=80, n_test_questions=20, selector_epochs=3,
                           ns=(1, 2, 4), lam=0.5)
    cache = tmp_path / "m.pt"
    r = run_experiment(cfg, cache, log=lambda m: None)
    assert cache.exists()
    acc = r["accuracy"]
    assert set(acc) == set(METHODS)
    for n in ("1", "2", "4"):
        # a majority among the chosen set can only be right if one of them is
        assert acc["sprint_exact"][n]["all"] <= acc["oracle_any"][n]["all"] + 1e-12
    # N = 1: the exact objective is p_i alone, so it picks what top-1 picks
    assert acc["sprint_exact"]["1"]["all"] == acc["topn_alignment"]["1"]["all"]
    assert r["solves"]["optimal"] == r["solves"]["count"] == 3 * 20
    assert r["solves"]["exact_minus_greedy_objective_mean"] >= -1e-9
    assert "| sprint_exact |" in markdown_table(r, "all")
    # loading the cached model reproduces the same table
    r2 = run_experiment(cfg, cache, log=lambda m: None)
    assert r2["accuracy"] == acc
    assert np.isfinite(r["selector"]["final_loss"])


def test_test_questions_are_unseen_by_the_selector():
    from optprune.sprint.task import generate_questions

    cfg = ExperimentConfig()
    train = {q.text for q in generate_questions(cfg.n_train_questions, seed=cfg.seed + 101)}
    pool = generate_questions(4 * cfg.n_test_questions, seed=cfg.seed + 202)
    test = [q for q in pool if q.text not in train][: cfg.n_test_questions]
    assert len(test) == cfg.n_test_questions and not ({q.text for q in test} & train)
    # the overlap is real: without the filter some test questions would be training ones
    assert any(q.text in train for q in pool[: cfg.n_test_questions])
