"""The default pipeline on all-MiniLM-L6-v2 (real pretrained weights, offline) against
the usual rules, on two held-out domains.

Calibration: packed token sequences of standard-library docstrings (the scoring half of
``optprune.nn.corpus``). Quality: mean cosine between the pruned and the dense sentence
embeddings of (a) held-out docstrings and (b) everyday English sentences written for the
project (``optprune.nn.everyday``, never used for calibration), and (c) whether each
everyday sentence's nearest neighbour keeps its topic. Budgets: a fraction r of the
prunable parameters (heads and FFN channels) removed, the same cap for every rule.

Contenders (heads and FFN channels):

* ``top-k`` / ``uniform`` / ``exact-flap``: FLAP's fluctuation summed over a group's
  channels (the best of the project's earlier scores on this model), selected by a global
  threshold, by one ratio per layer, or by maximizing its sum exactly;
* ``kwon``: Kwon et al.'s mask search on the mask-gradient Fisher (for every global head
  count, the best heads, then the best FFN channels that fit);
* ``calibrated``: the default pipeline (``optprune.nn.pipeline``: curves and the Fisher
  proposal, measured choice, reconstruction), with a cheaper curve setting than the
  default (``--k-best 2``, 32 curve sequences, 8 measured widths per slot);
* ``calibrated-fisher``: the pipeline without curves (``CalibrationOptions(curves=False,
  k_best=1)``: the exact optimum of the summed Fisher saliency, then reconstruction);
* ``prune``: the one call a user types, ``optprune.prune(model, budget=..., data=calib)``
  with every default (its ``curves="auto"`` skips the curves on this model), timed from
  structure discovery to the pruned model on ``--threads`` torch threads.

Every selection is measured as it is and with the same reconstruction. Times are wall
and CPU seconds of the whole selection (calibration passes included).

    .venv/bin/python benchmarks/bench_calibrated_minilm.py --reductions 0.3 0.5
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import optprune  # noqa: E402
from optprune.alloc import AllocationProblem, allocate  # noqa: E402
from optprune.nn import importance as imp  # noqa: E402
from optprune.nn.bridge import problem_from_structures  # noqa: E402
from optprune.nn.corpus import load_corpus, mean_cosine, pack_token_ids, sentence_embeddings  # noqa: E402
from optprune.nn.everyday import everyday_sentences, topic_neighbour_accuracy  # noqa: E402
from optprune.nn.fisher import mask_fisher  # noqa: E402
from optprune.nn.hf import bert_structures, load_minilm, prune_bert  # noqa: E402
from optprune.nn.pipeline import CalibrationOptions, calibrated_selection  # noqa: E402
from optprune.nn.reconstruct import reconstruct  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_calibrated import add_method_args, guard_options, kwon_select  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--n-calib", type=int, default=128, help="packed calibration sequences")
    ap.add_argument("--n-eval", type=int, default=512, help="held-out docstrings")
    ap.add_argument("--reductions", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--k-best", type=int, default=2)
    ap.add_argument("--curve-samples", type=int, default=32)
    ap.add_argument("--max-widths", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    add_method_args(ap, "contenders to run (default: all of top-k uniform exact-flap kwon "
                        "calibrated calibrated-fisher prune)")
    ap.add_argument("--out", default="benchmarks/out/calibrated_minilm.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = load_minilm()
    corpus = load_corpus()
    held = list(corpus.eval[: args.n_eval])
    calib = pack_token_ids(tok, corpus.score, args.seq_len, args.n_calib).float()
    ss = bert_structures(model, seq_len=args.seq_len)
    costs = ss.costs()["params"]
    prunable, fixed = float(costs.sum()), float(ss.fixed_params)
    judge = EmbeddingJudge(model, tok, held, ss)
    print(f"MiniLM: {ss.dense_params:,} params, {prunable:,.0f} prunable; calibration "
          f"{calib.shape[0]} x {args.seq_len} docstring tokens; held out {len(held)} docstrings, "
          f"{len(judge.every)} everyday sentences (dense topic-neighbour accuracy "
          f"{judge.dense_topic:.3f})", flush=True)
    physical = judge.of_keep

    t = time.perf_counter()
    flap = imp.score(ss, "flap", calib, aggregate="sum")
    t_flap = time.perf_counter() - t
    t = time.perf_counter()
    fr_kwon = mask_fisher(ss, calib, batch_size=32, blocks=False)
    t_kwon = time.perf_counter() - t
    rows = []
    for r in args.reductions:
        cap = fixed + (1.0 - r) * prunable
        p = AllocationProblem(ss.ids, ss.layers, ss.kinds, flap, {"params": costs},
                              fixed_costs={"params": fixed}, name=f"minilm-flap-{r}")
        p.add_budget("params", max=cap)
        res = allocate(p, baselines=["topk_rounded", "uniform"], rel_gap=1e-4, time_limit_s=60)
        sel = {"top-k": res.baselines["topk_rounded"].keep, "uniform": res.baselines["uniform"].keep,
               "exact-flap": res.keep}
        pk = problem_from_structures(ss, fr_kwon.saliency)
        pk.add_budget("params", max=cap)
        sel["kwon"] = kwon_select(ss, pk, fr_kwon.saliency)
        times = {"top-k": t_flap, "uniform": t_flap, "exact-flap": t_flap + res.total_time_s,
                 "kwon": t_kwon}
        cpu: dict[str, float] = {}
        # The pipeline: same cap, measured end to end (calibration passes included).
        q = problem_from_structures(ss, np.zeros(len(ss.groups)))
        qcap = min(cap, min(ss.predict(k)["params"] for k in sel.values()))
        q.add_budget("params", max=qcap)
        guard = guard_options(args)
        pipelines = {
            "calibrated": CalibrationOptions(curves=True, k_best=args.k_best, batch_size=32,
                                             curve_samples=args.curve_samples,
                                             max_widths=args.max_widths, **guard),
            "calibrated-fisher": CalibrationOptions(curves=False, k_best=1, batch_size=32,
                                                    **guard),
        }
        wanted = set(args.methods or list(sel) + list(pipelines))
        sel = {k: v for k, v in sel.items() if k in wanted}
        runs = {}
        for label, opts in pipelines.items():
            if label not in wanted:
                continue
            t, c = time.perf_counter(), time.process_time()
            runs[label] = calibrated_selection(ss, q, calib, opts, rel_gap=1e-4)
            times[label] = time.perf_counter() - t
            cpu[label] = time.process_time() - c
            sel[label] = runs[label].keep
        if "prune" in wanted:
            t, c = time.perf_counter(), time.process_time()
            ss_u = bert_structures(model, seq_len=args.seq_len)  # discovery counts
            budget = qcap / ss_u.dense_params
            pruned, rep = optprune.prune(ss_u.model, budget=budget, data=calib, structures=ss_u)
            times["prune"] = time.perf_counter() - t
            cpu["prune"] = time.process_time() - c
            sel["prune"] = np.isin(ss.ids, rep.kept_ids)
            user = {"bert": pruned.__dict__["wrapped"], "stages": rep.stages,
                    "times": rep.times_s, "after": rep.after, "predicted": rep.predicted}
        for label, keep in sel.items():
            row = {"reduction": r, "method": label, "time_s": times[label],
                   "cpu_s": cpu.get(label),
                   "prunable_removed": 1.0 - (ss.predict(keep)["params"] - fixed) / prunable}
            if label == "prune":
                row.update(physical(ss, keep))
                row.update({f"rec_{k}": v for k, v in judge.of(user["bert"]).items()})
                assert user["after"]["params"] == user["predicted"]["params"]
                row.update(settings=user["stages"].get("settings"), chosen=user["stages"]["chosen"],
                           candidates=user["stages"]["candidates"],
                           stage_times_s=user["stages"]["times_s"], prune_times_s=user["times"])
            elif label in runs:
                cs = runs[label]
                row.update({f"rec_{k}": v for k, v in physical(cs.structures, keep).items()})
                row.update(physical(ss, keep))
                row["candidates"] = cs.candidates
                row["chosen"] = cs.chosen
                row["stage_times_s"] = cs.times_s
            else:
                row.update(physical(ss, keep))
                work = dataclasses.replace(ss, model=copy.deepcopy(ss.model))
                t = time.perf_counter()
                reconstruct(work, keep, calib, batch_size=32)
                row["rec_time_s"] = time.perf_counter() - t
                row.update({f"rec_{k}": v for k, v in physical(work, keep).items()})
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in row.items() if k != "candidates"}), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"rows": rows, "dense_topic": judge.dense_topic}, fh, indent=1)
    print(table(rows, judge.dense_topic))
    return 0


class EmbeddingJudge:
    """A pruned MiniLM judged against the dense one: mean cosine of the sentence
    embeddings on held-out docstrings (``cos_doc``) and on the everyday sentences
    (``cos_every``), and the everyday sentences' topic-neighbour accuracy (``topic``)."""

    def __init__(self, model, tok, held: list[str], ss) -> None:
        self.tok, self.held, self.ss = tok, held, ss
        self.every, self.topics = everyday_sentences()
        self.dense_h = sentence_embeddings(model, tok, held)
        self.dense_e = sentence_embeddings(model, tok, self.every)
        self.dense_topic = topic_neighbour_accuracy(self.dense_e.numpy(), self.topics)

    def of(self, bert) -> dict[str, float]:
        e = sentence_embeddings(bert, self.tok, self.every)
        return {"cos_doc": mean_cosine(self.dense_h, sentence_embeddings(bert, self.tok,
                                                                         self.held)),
                "cos_every": mean_cosine(self.dense_e, e),
                "topic": topic_neighbour_accuracy(e.numpy(), self.topics)}

    def of_keep(self, work_ss, keep) -> dict[str, float]:
        """The physically pruned copy of ``work_ss.model`` (the dense one, or a
        reconstructed one) judged, with its parameter count checked against the
        prediction."""
        bert = prune_bert(copy.deepcopy(work_ss.model.__dict__["wrapped"]), keep, self.ss)
        q = self.of(bert)
        q["params"] = sum(p.numel() for p in bert.parameters())
        assert q["params"] == self.ss.predict(keep)["params"]
        return q


def table(rows, dense_topic: float) -> str:
    out = [f"dense topic-neighbour accuracy {dense_topic:.3f}", "",
           "| removed | method | cos doc | +recon | cos everyday | +recon | topic | +recon "
           "| time s | CPU s |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['prunable_removed']:.3f} | {r['method']} | {r['cos_doc']:.3f} | "
                   f"{r['rec_cos_doc']:.3f} | {r['cos_every']:.3f} | {r['rec_cos_every']:.3f} | "
                   f"{r['topic']:.3f} | {r['rec_topic']:.3f} | {r['time_s']:.1f} | "
                   + ("-" if r.get("cpu_s") is None else f"{r['cpu_s']:.1f}") + " |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
