"""Does the form of the calibration data matter? all-MiniLM-L6-v2, the default pipeline
without curves (``CalibrationOptions(curves=False, k_best=1)``: the exact optimum of the
summed Fisher saliency, then the reconstruction), calibrated on the same 128 docstrings'
text in two forms:

* ``packed``: ``optprune.nn.corpus.pack_token_ids``: the docstrings' tokens concatenated
  and cut into [CLS] ... [SEP] rows of 64 tokens (no padding; 128 rows);
* ``sentences``: each docstring on its own row, [CLS] ... [SEP] and padding to 64 tokens
  (the form ``sentence_embeddings`` feeds the model; the padding is masked in attention).

Judged as in bench_calibrated_minilm.py: mean cosine to the dense sentence embeddings on
held-out docstrings and on the everyday sentences, and topic-neighbour accuracy, one-shot
(the selection masked) and as the pipeline returns it (reconstructed).

    .venv/bin/python benchmarks/bench_calibration_form.py --reductions 0.3 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from optprune.nn.bridge import problem_from_structures  # noqa: E402
from optprune.nn.corpus import load_corpus, pack_token_ids  # noqa: E402
from optprune.nn.hf import bert_structures, load_minilm  # noqa: E402
from optprune.nn.pipeline import CalibrationOptions, calibrated_selection  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_calibrated_minilm import EmbeddingJudge  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--n-eval", type=int, default=512)
    ap.add_argument("--reductions", type=float, nargs="+", default=[0.3, 0.5])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, tok = load_minilm()
    corpus = load_corpus()
    text = list(corpus.score[: args.n_calib])
    forms = {
        "packed": pack_token_ids(tok, corpus.score, args.seq_len, args.n_calib).float(),
        "sentences": tok(text, padding="max_length", truncation=True, max_length=args.seq_len,
                         return_tensors="pt")["input_ids"].float(),
    }
    ss = bert_structures(model, seq_len=args.seq_len)
    costs = ss.costs()["params"]
    prunable, fixed = float(costs.sum()), float(ss.fixed_params)
    judge = EmbeddingJudge(model, tok, list(corpus.eval[: args.n_eval]), ss)

    rows = []
    for r in args.reductions:
        for form, calib in forms.items():
            p = problem_from_structures(ss, np.zeros(len(ss.groups)))
            p.add_budget("params", max=fixed + (1.0 - r) * prunable)
            c = time.process_time()
            sel = calibrated_selection(ss, p, calib, CalibrationOptions(
                curves=False, k_best=1, batch_size=32), rel_gap=1e-4)
            row = {"reduction": r, "form": form, "cpu_s": time.process_time() - c,
                   "real_tokens": int((calib != tok.pad_token_id).sum()),
                   "masked": judge.of_keep(ss, sel.keep),
                   "reconstructed": judge.of_keep(sel.structures, sel.keep)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| removed | calibration | real tokens | doc | +rec | everyday | +rec | topic | +rec "
          "| CPU s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for x in rows:
        m, q = x["masked"], x["reconstructed"]
        print(f"| {x['reduction']:.1f} | {x['form']} | {x['real_tokens']:,} | "
              f"{m['cos_doc']:.3f} | {q['cos_doc']:.3f} | {m['cos_every']:.3f} | "
              f"{q['cos_every']:.3f} | {m['topic']:.3f} | {q['topic']:.3f} | "
              f"{x['cpu_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
