"""Best-of-N with majority vote: SPRINT-style exact diverse subsets vs the baselines.

For every held-out question and every N, each method produces N candidate answers and
the majority vote (ties: larger summed predicted accuracy, then first seen) is scored
against the true answer:

* ``dense_sampling``  N samples of the dense model at temperature T (plain best-of-N);
* ``random_heads``    N distinct configurations drawn uniformly (greedy decoding each);
* ``topn_alignment``  the N configurations with the largest predicted accuracy;
* ``sprint_exact``    the N configurations maximizing predicted accuracy + lambda x
                      diversity under the compute budget, solved exactly (subset.py);
* ``sprint_greedy``   the same objective, chosen greedily (what exactness buys);
* ``*_weighted``      the same sets (greedy decoding), log-odds weighted vote
                      (``selector.weighted_vote``) instead of a plain majority;
* ``*_sampled``       the same sets, each configuration sampling once at temperature T
                      instead of decoding greedily;
* ``oracle_any``      upper bound: some chosen (sprint_exact) configuration is right.

Configurations decode greedily (or sample once), so the candidate of configuration c
on question q is one entry of a table a_{q,c}, computed once for all pairs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import check
from .configs import candidate_configs, config_costs, config_masks
from .model import (SprintTransformer, answer, answer_table, default_model, train_model)
from .selector import ContrastiveSelector, majority_vote, question_features, weighted_vote
from .subset import SubsetProblem, greedy, solve_subset
from .task import DIFFICULTY_BUCKETS, Tokenizer, generate_questions

METHODS = ("dense_sampling", "random_heads", "topn_alignment", "sprint_exact", "sprint_greedy",
           "random_heads_sampled", "sprint_exact_sampled", "sprint_exact_weighted",
           "topn_weighted", "oracle_any")


@dataclass(frozen=True)
class ExperimentConfig:
    seed: int = 0
    modulus: int = 7
    max_steps: int = 8
    # model and its training
    heads: tuple[int, ...] = (4, 4, 4)
    d_model: int = 48
    head_dim: int = 12
    d_ff: int = 96
    train_steps: int = 1000
    schedule_steps: int = 1400  # stop part-way along the lr schedule: dense accuracy ~0.8
    lr: float = 3e-3
    batch_size: int = 64
    head_dropout: float = 0.05
    # configurations and selector
    n_pairs: int = 19
    n_train_questions: int = 800
    n_test_questions: int = 300
    selector_epochs: int = 60
    # selection and decoding
    ns: tuple[int, ...] = (1, 2, 4, 8, 16)
    lam: float = 0.5
    budget_fraction: float = 1.0
    temperature: float = 0.7
    backend: str = "highs"
    time_limit_s: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_model(cfg: ExperimentConfig, cache: str | Path | None = None,
                ) -> tuple[SprintTransformer, Tokenizer, dict]:
    """Train (or load from ``cache`` if it exists) the experiment's model."""
    tok = Tokenizer(cfg.modulus)
    if cache is not None and Path(cache).exists():
        model = SprintTransformer.load(cache)
        return model, tok, {"loaded_from": str(cache)}
    model = default_model(tok, cfg.max_steps, cfg.heads, cfg.d_model, cfg.head_dim, cfg.d_ff,
                          seed=cfg.seed)
    rep = train_model(model, tok, steps=cfg.train_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                      max_steps=cfg.max_steps, seed=cfg.seed, head_dropout=cfg.head_dropout,
                      schedule_steps=cfg.schedule_steps)
    if cache is not None:
        model.save(cache)
    info = {"train_time_s": rep.train_time_s, "train_steps": rep.steps,
            "final_loss": rep.final_loss}
    return model, tok, info


def run_experiment(cfg: ExperimentConfig = ExperimentConfig(), model_cache: str | Path | None = None,
                   log=print) -> dict[str, Any]:
    """Run the whole comparison; returns plain data (JSON-serializable)."""
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    model, tok, train_info = build_model(cfg, model_cache)
    log(f"model: {train_info}")
    configs = candidate_configs(model, n_pairs=cfg.n_pairs, seed=cfg.seed)
    c = len(configs)
    check(max(cfg.ns) <= c, "The largest N", f"at most the number of configurations ({c})",
          max(cfg.ns), "Raise n_pairs or lower N.")
    masks = config_masks(model, configs)
    costs = config_costs(model, configs)
    train_q = generate_questions(cfg.n_train_questions, seed=cfg.seed + 101,
                                 max_steps=cfg.max_steps, modulus=cfg.modulus)
    # held out for the selector: no test question appears among its training questions
    # (short chains repeat often: there are only 140 one-step questions)
    seen = {q.text for q in train_q}
    pool = generate_questions(4 * cfg.n_test_questions, seed=cfg.seed + 202,
                              max_steps=cfg.max_steps, modulus=cfg.modulus)
    test_q = [q for q in pool if q.text not in seen][: cfg.n_test_questions]
    check(len(test_q) == cfg.n_test_questions, "The number of unseen test questions",
          f"{cfg.n_test_questions}", len(test_q), "Lower n_test_questions or raise max_steps.")
    truth_tr = np.array([q.answer for q in train_q])
    truth_te = np.array([q.answer for q in test_q])

    t0 = time.perf_counter()
    ans_tr = answer_table(model, tok, train_q, masks)
    ans_te = answer_table(model, tok, test_q, masks)
    ans_te_t = answer_table(model, tok, test_q, masks, cfg.temperature, seed=cfg.seed + 505)
    table_time_s = time.perf_counter() - t0
    log(f"answer tables: {ans_tr.shape} + {ans_te.shape} in {table_time_s:.1f} s")

    t0 = time.perf_counter()
    selector = ContrastiveSelector(configs, epochs=cfg.selector_epochs, seed=cfg.seed)
    selector.fit(question_features(model, tok, train_q), ans_tr, truth_tr)
    pred = selector.predicted_accuracy(question_features(model, tok, test_q))
    selector_time_s = time.perf_counter() - t0
    log(f"selector: InfoNCE {selector.initial_loss_:.3f} -> {selector.final_loss_:.3f} "
        f"in {selector_time_s:.1f} s")

    samples = answer(model, tok, test_q, None, cfg.temperature, seed=cfg.seed + 303,
                     repeats=max(cfg.ns))
    rng = np.random.default_rng(cfg.seed + 404)
    correct_te = ans_te == truth_te[:, None]
    dense_cost = int(costs.max())

    per_q: dict[str, dict[int, np.ndarray]] = {m: {} for m in METHODS}
    solve_times, n_optimal, n_solves, exact_minus_greedy = [], 0, 0, []
    for n in cfg.ns:
        budget = cfg.budget_fraction * n * dense_cost
        res = {m: np.zeros(len(test_q), dtype=bool) for m in METHODS}
        for i in range(len(test_q)):
            res["dense_sampling"][i] = majority_vote(samples[i, :n]) == truth_te[i]
            pick = rng.choice(c, size=n, replace=False)
            res["random_heads"][i] = majority_vote(ans_te[i, pick]) == truth_te[i]
            res["random_heads_sampled"][i] = majority_vote(ans_te_t[i, pick]) == truth_te[i]
            top = np.argsort(-pred[i], kind="stable")[:n]
            res["topn_alignment"][i] = majority_vote(ans_te[i, top], pred[i, top]) == truth_te[i]
            res["topn_weighted"][i] = \
                weighted_vote(ans_te[i, top], pred[i, top], cfg.modulus) == truth_te[i]
            prob = SubsetProblem(pred[i], selector.dissimilarity_, n, cfg.lam, costs, budget)
            sol = solve_subset(prob, cfg.backend, time_limit_s=cfg.time_limit_s)
            sel = np.array(sol.selected)
            solve_times.append(sol.solve_time_s)
            n_optimal += int(sol.optimal)
            n_solves += 1
            res["sprint_exact"][i] = majority_vote(ans_te[i, sel], pred[i, sel]) == truth_te[i]
            res["sprint_exact_sampled"][i] = \
                majority_vote(ans_te_t[i, sel], pred[i, sel]) == truth_te[i]
            res["sprint_exact_weighted"][i] = \
                weighted_vote(ans_te[i, sel], pred[i, sel], cfg.modulus) == truth_te[i]
            res["oracle_any"][i] = bool(correct_te[i, sel].any())
            g = greedy(prob)
            exact_minus_greedy.append(sol.objective - g.objective)
            gs = np.array(g.selected)
            res["sprint_greedy"][i] = majority_vote(ans_te[i, gs], pred[i, gs]) == truth_te[i]
        for m in METHODS:
            per_q[m][n] = res[m]
        log(f"N={n}: " + ", ".join(f"{m} {res[m].mean():.3f}" for m in METHODS))

    steps = np.array([q.steps for q in test_q])
    buckets = {name: (steps >= lo) & (steps <= hi) for name, (lo, hi) in DIFFICULTY_BUCKETS.items()}
    buckets["all"] = np.ones(len(test_q), dtype=bool)
    table = {m: {str(n): {b: _mean(per_q[m][n][mask]) for b, mask in buckets.items()}
                 for n in cfg.ns} for m in METHODS}
    dense_ok = correct_te[:, 0]
    paired = {m: {str(n): {"wins": int(np.sum(per_q[m][n] & ~dense_ok)),
                           "losses": int(np.sum(~per_q[m][n] & dense_ok))} for n in cfg.ns}
              for m in METHODS}
    single = {configs[j].id: float(correct_te[:, j].mean()) for j in range(c)}
    egap = np.array(exact_minus_greedy)
    return {
        "config": cfg.to_dict(),
        "train": train_info,
        "n_configurations": c,
        "questions_per_bucket": {b: int(m.sum()) for b, m in buckets.items()},
        "dense_greedy_accuracy": {b: _mean(correct_te[buckets[b], 0]) for b in buckets},
        "dense_sample_accuracy": {b: _mean(samples[buckets[b], 0] == truth_te[buckets[b]])
                                  for b in buckets},
        "single_configuration_accuracy": single,
        "selector": {"initial_loss": selector.initial_loss_, "final_loss": selector.final_loss_,
                     "mean_dissimilarity": float(selector.dissimilarity_.mean()),
                     "time_s": selector_time_s},
        "accuracy": table,
        # questions a method gets right and the dense model (greedy) wrong, and vice versa
        "paired_vs_dense_greedy": paired,
        "solves": {"count": n_solves, "optimal": n_optimal, "backend": cfg.backend,
                   "mean_time_s": float(np.mean(solve_times)),
                   "max_time_s": float(np.max(solve_times)),
                   "exact_minus_greedy_objective_mean": float(egap.mean()),
                   "greedy_suboptimal_fraction": float((egap > 1e-9).mean())},
        "answer_table_time_s": table_time_s,
        "total_time_s": time.perf_counter() - t_all,
    }


def _mean(x: np.ndarray) -> float | None:
    """Mean of a boolean array; None for an empty bucket (JSON null, never NaN)."""
    return float(np.mean(x)) if len(x) else None


def markdown_table(result: dict[str, Any], bucket: str) -> str:
    ns = result["config"]["ns"]
    lines = [f"| method ({bucket}, n={result['questions_per_bucket'][bucket]}) | "
             + " | ".join(f"N={n}" for n in ns) + " |",
             "|---|" + "---:|" * len(ns)]
    for m in METHODS:
        row = result["accuracy"][m]
        lines.append(f"| {m} | " + " | ".join(
            "-" if row[str(n)][bucket] is None else f"{row[str(n)][bucket]:.3f}" for n in ns) + " |")
    return "\n".join(lines)


__all__: Sequence[str] = ["ExperimentConfig", "run_experiment", "markdown_table", "METHODS"]
