"""``optprune sprint train | answer | experiment``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import ValidationError, check
from ..experiments.jsonio import write_json_atomic


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sprint", help="SPRINT: per-question head pruning for diverse best-of-N",
                       description="Train a small reasoning transformer and a contrastive "
                       "head-configuration selector, then answer questions by best-of-N over "
                       "configurations chosen exactly (formulations/sprint.md).")
    s = p.add_subparsers(dest="sprint_command", required=True, metavar="SUBCOMMAND")

    t = s.add_parser("train", help="train the model (or reuse one) and the selector")
    t.add_argument("--out", required=True, metavar="DIR", help="directory for model.pt, "
                   "selector.pt and meta.json")
    t.add_argument("--model", metavar="FILE", help="reuse this trained model.pt")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--train-steps", type=int, default=1000)
    t.add_argument("--schedule-steps", type=int, default=1400, help="length of the lr "
                   "schedule; training stops after --train-steps of it")
    t.add_argument("--heads", type=_ints, default=(4, 4, 4), help="heads per layer, e.g. 4,4,4")
    t.add_argument("--d-model", type=int, default=48)
    t.add_argument("--head-dim", type=int, default=12)
    t.add_argument("--max-steps", type=int, default=8, help="longest question (steps)")
    t.add_argument("--n-pairs", type=int, default=19, help="random head pairs offered besides "
                   "dense and every single head")
    t.add_argument("--questions", type=int, default=800, help="training questions for the "
                   "selector")
    t.add_argument("--selector-epochs", type=int, default=60)
    t.set_defaults(func=run_train)

    a = s.add_parser("answer", help="answer a question by best-of-N over chosen configurations")
    a.add_argument("--dir", required=True, metavar="DIR", help="output of `sprint train`")
    a.add_argument("question", help="e.g. '3+4*2-5' (chained left to right, modulo 7)")
    a.add_argument("-n", "--n", type=int, default=4, help="number of configurations N")
    a.add_argument("--lam", type=float, default=0.5, help="diversity weight lambda")
    a.add_argument("--backend", default="highs", help="highs | cpsat | scip | brute | greedy")
    a.add_argument("--configs", metavar="ID,ID,...", help="choose only among these "
                   "configurations (ids like dense, L0H1, L0H1+L2H3)")
    a.add_argument("--budget-fraction", type=float, default=1.0,
                   help="compute budget as a fraction of N dense runs (default 1)")
    a.add_argument("--time-limit", type=float, default=10.0, metavar="S")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=run_answer)

    e = s.add_parser("experiment", help="accuracy at N = 1..16 by difficulty vs baselines")
    e.add_argument("--out", metavar="FILE", help="write the full result (JSON)")
    e.add_argument("--model-cache", metavar="FILE", help="load/save the trained model here")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--train-steps", type=int, default=1000)
    e.add_argument("--test-questions", type=int, default=300)
    e.add_argument("--lam", type=float, default=0.5)
    e.add_argument("--backend", default="highs")
    e.add_argument("--ns", type=_ints, default=(1, 2, 4, 8, 16))
    e.set_defaults(func=run_experiment_cmd)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from .configs import candidate_configs, config_costs, config_masks
    from .model import SprintTransformer, answer_table, default_model, train_model
    from .selector import ContrastiveSelector, question_features
    from .task import Tokenizer, generate_questions

    torch.set_num_threads(1)
    check(args.train_steps >= 1, "--train-steps", "a positive integer", args.train_steps)
    check(args.questions >= 10, "--questions", "at least 10", args.questions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(7)
    info: dict = {}
    if args.model:
        model = SprintTransformer.load(args.model)
    else:
        check(len(args.heads) >= 1, "--heads", "one head count per layer (e.g. 4,4,4)", args.heads)
        model = default_model(tok, args.max_steps, args.heads, args.d_model, args.head_dim,
                              2 * args.d_model, seed=args.seed)
        configs = candidate_configs(model)  # fails early for a model without heads
        rep = train_model(model, tok, steps=args.train_steps, max_steps=args.max_steps,
                          seed=args.seed, head_dropout=0.05,
                          schedule_steps=args.schedule_steps)
        info = {"train_time_s": rep.train_time_s, "final_loss": rep.final_loss}
        print(f"trained {args.train_steps} steps in {rep.train_time_s:.1f} s "
              f"(loss {rep.final_loss:.3f})", file=sys.stderr)
    configs = candidate_configs(model, n_pairs=args.n_pairs, seed=args.seed)
    max_steps = (model.spec.max_len - 4) // 3
    qs = generate_questions(args.questions, seed=args.seed + 101, max_steps=max_steps)
    answers = answer_table(model, tok, qs, config_masks(model, configs))
    truth = np.array([q.answer for q in qs])
    sel = ContrastiveSelector(configs, epochs=args.selector_epochs, seed=args.seed)
    sel.fit(question_features(model, tok, qs), answers, truth)
    model.save(out / "model.pt")
    sel.save(out / "selector.pt")
    acc = (answers == truth[:, None]).mean(0)
    meta = {"configurations": [c.id for c in configs],
            "costs_mac_per_token": config_costs(model, configs).tolist(),
            "train_question_accuracy": dict(zip([c.id for c in configs], acc.round(4).tolist())),
            "selector_loss": [sel.initial_loss_, sel.final_loss_], **info}
    write_json_atomic(out / "meta.json", meta)
    print(f"wrote {out}/model.pt, selector.pt, meta.json: {len(configs)} configurations, "
          f"dense accuracy {acc[0]:.3f}, InfoNCE {sel.initial_loss_:.3f} -> "
          f"{sel.final_loss_:.3f}")
    return 0


def run_answer(args: argparse.Namespace) -> int:
    import torch

    from .configs import HeadConfig, config_costs, config_masks
    from .model import SprintTransformer, answer_table
    from .selector import ContrastiveSelector, majority_vote, question_features
    from .subset import SubsetProblem, solve_subset
    from .task import Tokenizer, parse_question

    torch.set_num_threads(1)
    d = Path(args.dir)
    model = SprintTransformer.load(d / "model.pt")
    sel = ContrastiveSelector.load(d / "selector.pt")
    tok = Tokenizer(7)
    q = parse_question(args.question, tok.modulus)
    max_steps = (model.spec.max_len - 4) // 3
    check(q.steps <= max_steps, "The number of steps of the question",
          f"at most {max_steps} (the longest the model was built for)", q.steps)
    pool = list(range(len(sel.configs)))
    if args.configs:
        pool = sel.index_of([t for t in args.configs.split(",") if t.strip()])
    check(1 <= args.n <= len(pool), "N (--n)",
          f"in [1, {len(pool)}] (the number of configurations offered)", args.n,
          "Lower --n or offer more configurations with --configs.")
    configs = [sel.configs[i] for i in pool]
    costs = config_costs(model, configs)
    pred = sel.predicted_accuracy(question_features(model, tok, [q]))[0, pool]
    dis = sel.dissimilarity_[np.ix_(pool, pool)]
    dense_cost = int(config_costs(model, [HeadConfig(())])[0])
    budget = args.budget_fraction * args.n * dense_cost
    prob = SubsetProblem(pred, dis, args.n, args.lam, costs, budget,
                         ids=tuple(c.id for c in configs))
    kw = {"time_limit_s": args.time_limit} if args.backend not in ("brute", "greedy") else {}
    sol = solve_subset(prob, args.backend, **kw)
    chosen = [configs[i] for i in sol.selected]
    ans = answer_table(model, tok, [q], config_masks(model, chosen))[0]
    weights = pred[list(sol.selected)]
    final = majority_vote(ans, weights)
    out = {
        "question": q.text, "steps": q.steps, "difficulty": q.difficulty,
        "answer": final, "correct_answer": q.answer, "correct": final == q.answer,
        "candidates": [{"configuration": c.id, "predicted_accuracy": float(w), "answer": int(a)}
                       for c, w, a in zip(chosen, weights, ans)],
        "selection": sol.to_dict(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"question {q.text}= ({q.steps} steps, {q.difficulty}); N={args.n}, lambda={args.lam}, "
          f"backend {sol.backend}: objective {sol.objective:.4f} "
          f"({'optimal' if sol.optimal else 'not proven optimal'}, gap {sol.gap:.2e})")
    for c, w, a in zip(chosen, weights, ans):
        print(f"  {c.id:<12} p={float(w):.3f}  answer {int(a) if a >= 0 else 'malformed'}")
    print(f"majority answer {final}; correct answer {q.answer}: "
          f"{'right' if final == q.answer else 'wrong'}")
    return 0


def run_experiment_cmd(args: argparse.Namespace) -> int:
    from .experiment import ExperimentConfig, markdown_table, run_experiment

    if not args.ns or min(args.ns) < 1:
        raise ValidationError(f"--ns must be positive integers like 1,2,4; got {args.ns!r}.")
    cfg = ExperimentConfig(seed=args.seed, train_steps=args.train_steps,
                           n_test_questions=args.test_questions, lam=args.lam,
                           backend=args.backend, ns=tuple(args.ns))
    res = run_experiment(cfg, args.model_cache, log=lambda m: print(m, file=sys.stderr))
    for b in ("easy", "medium", "hard", "all"):
        print(markdown_table(res, b))
        print()
    if args.out:
        write_json_atomic(args.out, res)
    return 0
