"""optprune.prune on all-MiniLM-L6-v2 with CalibrationOptions variants, judged like
bench_calibrated_minilm.py (mean cosine to the dense sentence embeddings on 512 held-out
docstrings and on the everyday sentences, topic-neighbour accuracy), reconstructed (what
prune returns) and the same selection unrefit. Calibration: 128 packed docstring
sequences of 64 tokens.

    OMP_NUM_THREADS=2 python benchmarks/bench_minilm_variants.py \\
        '{"default": {}, "hidden": {"output": "hidden"}}' 0.765905

argv[1]: JSON {name: CalibrationOptions keywords, plus "output": "embedding" | "hidden",
the output of ``bert_structures`` the pipeline calibrates on (mean-pooled sentence
embedding, or every token's last hidden state)}; argv[2]: the kept fraction of all
parameters (0.765905 / 0.859363: the 50% / 30% prunable-parameter budgets of
bench_calibrated_minilm.py). Knapsacks at gap 1e-4, no baselines, two torch threads.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import optprune  # noqa: E402
from optprune.nn.corpus import load_corpus, pack_token_ids  # noqa: E402
from optprune.nn.hf import bert_structures, load_minilm  # noqa: E402
from optprune.nn.pipeline import CalibrationOptions  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_calibrated_minilm import EmbeddingJudge  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    variants: dict[str, dict] = json.loads(argv[0])
    budget = float(argv[1])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model, tok = load_minilm()
    corpus = load_corpus()
    calib = pack_token_ids(tok, corpus.score, 64, 128).float()
    ss = bert_structures(model, seq_len=64)
    judge = EmbeddingJudge(model, tok, list(corpus.eval[:512]), ss)
    for name, kw in variants.items():
        kw = dict(kw)
        t = time.perf_counter()
        ss_u = bert_structures(model, seq_len=64, output=kw.pop("output", "embedding"))
        pruned, rep = optprune.prune(ss_u.model, budget=budget, data=calib, structures=ss_u,
                                     calibration=CalibrationOptions(**kw), rel_gap=1e-4,
                                     baselines=False)
        elapsed = time.perf_counter() - t
        rec = judge.of(pruned.__dict__["wrapped"])
        unrefit = judge.of_keep(ss, np.isin(ss.ids, rep.kept_ids))
        print(json.dumps({
            "variant": name, "params": rep.after["params"], "time_s": round(elapsed, 1),
            "rec": {k: round(v, 4) for k, v in rec.items()},
            "unrefit": {k: round(v, 4) for k, v in unrefit.items() if k != "params"},
            "settings": rep.stages.get("settings"),
            "kept_dense": [c.get("layers_kept_dense") for c in rep.stages["candidates"]]}),
            flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
