"""Coverage of real model families: optprune vs Torch-Pruning 1.6.1, and the structure
discovery engines measured side by side.

Models: ``optprune.nn.zoo`` (Hugging Face models from small configs with random weights,
all-MiniLM-L6-v2 with its real weights, torch's attention layers, Conv1d, the project's
models); every one runs on its zoo inputs (2 samples: token ids + attention mask, pixels
or features).

Table 1, discovery engines (how the graph of a model is obtained):
  fx        torch.fx.symbolic_trace (what optprune used before);
  export    torch.export.export(strict=False) (decoders with use_cache=False);
  tp-graph  Torch-Pruning's DependencyGraph.build_dependency (autograd graph);
  optprune  optprune.nn.structures.discover (one recorded run + channel analysis), with
            the number of groups it finds.
Table 2, pruning:
  optprune  optprune.prune(model, "magnitude", budget, data=inputs) with the exact
            allocation (time limit --time-limit s): parameters after (measured) vs
            predicted, the solver's termination, max |pruned - masked dense| on other
            random inputs, generate() == uncached greedy decoding for decoders, time.
  tp        Torch-Pruning's MetaPruner with MagnitudeImportance, --tp-ratio of the channels
            of every layer and of the heads (num_heads given for every attention
            projection, prune_num_heads=True, the usual per-family attribute fixes after
            step(), the model's output layer ignored): parameters after, does the pruned
            model run with the dense output shape, does generate() match uncached greedy
            decoding, time. Torch-Pruning predicts no parameter count.

  python benchmarks/bench_coverage.py                    # every zoo model
  python benchmarks/bench_coverage.py --models bert gpt2 --budget 0.6
  python benchmarks/bench_coverage.py --only none --real-size   # discovery at real width

Torch-Pruning comes from the ``bench`` extra (installed with --no-deps: it would
otherwise pull another torch).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import signal
import time
import traceback
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from optprune.nn import zoo  # noqa: E402
from optprune.nn.calib import model_output, run_model  # noqa: E402

DECODERS = ("gpt2", "llama-gqa", "llama-mha")


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}" if str(exc) else type(exc).__name__


def _timed(fn):
    t = time.perf_counter()
    try:
        out = fn()
        return True, out, time.perf_counter() - t
    except Exception as exc:  # a failing engine is a result of this benchmark
        return False, _err(exc), time.perf_counter() - t


def _forward(m, x):
    return model_output(run_model(m, x))


def engines(name: str) -> dict:
    from optprune.nn.structures import discover

    model, x = zoo.build(name)
    row = {"model": name}
    ok, out, s = _timed(lambda: torch.fx.symbolic_trace(model))
    row["fx"] = {"ok": ok, "s": s, "error": None if ok else out}
    kw = dict(x) if isinstance(x, dict) else None
    if kw is not None and hasattr(getattr(model, "config", None), "use_cache"):
        kw["use_cache"] = False
    ok, out, s = _timed(lambda: torch.export.export(model, () if kw is not None else (x,),
                                                    kwargs=kw, strict=False))
    row["export"] = {"ok": ok, "s": s, "error": None if ok else out}
    import torch_pruning as tp

    ok, out, s = _timed(lambda: tp.DependencyGraph().build_dependency(
        model, example_inputs=x, forward_fn=_forward, verbose=False))
    row["tp_graph"] = {"ok": ok, "s": s, "error": None if ok else out}
    ok, out, s = _timed(lambda: discover(model, data=x))
    row["optprune"] = {"ok": ok, "s": s, "error": None if ok else out,
                       "groups": len(out) if ok else None}
    return row


def _other_inputs(x, seed=7):
    g = torch.Generator().manual_seed(seed)
    if isinstance(x, dict):
        return {k: (torch.randint(3, int(v.max()) + 1, v.shape, generator=g) if k == "input_ids"
                    else torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
                for k, v in x.items()}
    return torch.randn(x.shape, generator=g)


def _generate_ok(m, x) -> bool | None:
    ids = x["input_ids"][:1]
    with torch.no_grad():
        gen = m.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        seq = ids
        for _ in range(5):
            nxt = m(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    return bool(torch.equal(gen, seq))


def run_optprune(name: str, budget: float, time_limit: float) -> dict:
    import optprune
    from optprune.nn.structures import discover

    model, x = zoo.build(name)
    dense = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    try:
        ss = discover(model, data=x)
        pruned, rep = optprune.prune(model, "magnitude", budget, data=x, structures=ss,
                                     baselines=False, time_limit_s=time_limit)
    except Exception as exc:  # reported, not hidden
        return {"ok": False, "error": _err(exc), "s": time.perf_counter() - t0, "dense": dense}
    s = time.perf_counter() - t0
    x2 = _other_inputs(x)
    keep = np.array([g in set(rep.kept_ids) for g in ss.ids])
    with torch.no_grad():
        with ss.masked(keep):
            ref = _forward(model, x2)
        err = float((_forward(pruned, x2) - ref).abs().max())
    a = rep.allocation or {}
    return {"ok": True, "s": s, "dense": dense, "after": rep.after["params"],
            "predicted": rep.predicted["params"], "termination": a.get("termination"),
            "gap": a.get("gap"), "groups": len(ss), "max_err": err,
            "generate": _generate_ok(pruned, x) if name in DECODERS else None}


def _tp_heads(model) -> tuple[dict, list]:
    """num_heads for every attention projection and the attribute fixes to run after
    step() (the glue Torch-Pruning's examples write per family)."""
    from optprune.nn.adapters import attention_kind
    from optprune.nn.models import MultiHeadAttention

    heads, fixes = {}, []
    for m in model.modules():
        kind = attention_kind(m)
        if kind == "bert":
            h = m.query.out_features // m.attention_head_size
            heads.update({m.query: h, m.key: h, m.value: h})

            def fix(m=m):
                m.num_attention_heads = m.query.out_features // m.attention_head_size
                m.all_head_size = m.query.out_features
            fixes.append(fix)
        elif kind == "proj":
            heads.update({m.q_proj: m.q_proj.out_features // m.head_dim,
                          m.k_proj: m.k_proj.out_features // m.head_dim,
                          m.v_proj: m.v_proj.out_features // m.head_dim})

            def fix(m=m):
                hq, hk = m.q_proj.out_features // m.head_dim, m.k_proj.out_features // m.head_dim
                for a, v in (("num_heads", hq), ("num_attention_heads", hq),
                             ("num_key_value_heads", hk)):
                    if hasattr(m, a):
                        setattr(m, a, v)
                if hasattr(m, "num_key_value_groups") and hk:
                    m.num_key_value_groups = hq // hk
            fixes.append(fix)
        elif isinstance(m, MultiHeadAttention):
            heads.update({m.q: m.num_heads, m.k: m.num_heads, m.v: m.num_heads})

            def fix(m=m):
                m.num_heads = m.q.out_features // m.head_dim
            fixes.append(fix)
        elif kind == "gpt2":
            heads[m.c_attn] = 3 * m.num_heads

            def fix(m=m):
                m.split_size = m.c_attn.weight.shape[1] // 3
                m.num_heads = m.split_size // m.head_dim
            fixes.append(fix)
    return heads, fixes


def _output_layers(model) -> list:
    """The model's output layer, as Torch-Pruning's examples ignore it: the task head
    (lm_head, classifier...), else the last Linear."""
    mods = dict(model.named_modules())
    found = [mods[n] for n in ("lm_head", "classifier", "head", "out", "fc") if n in mods]
    if not found:
        lins = [m for m in mods.values() if isinstance(m, torch.nn.Linear)]
        found = lins[-1:]
    return found


class _Timeout(Exception):
    pass


def _alarm(_sig, _frame):
    raise _Timeout("no result within the time limit")


def run_tp(name: str, ratio: float, timeout_s: int = 300) -> dict:
    """Torch-Pruning on one zoo model, stopped after ``timeout_s`` (its group search
    does not return on some models)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(timeout_s))
    try:
        return _run_tp(name, ratio)
    except _Timeout:
        return {"ok": False, "error": f"no result within {timeout_s} s", "s": float(timeout_s),
                "dense": None}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _run_tp(name: str, ratio: float) -> dict:
    import torch_pruning as tp

    model, x = zoo.build(name)
    dense = sum(p.numel() for p in model.parameters())
    ref_shape = tuple(_forward(model, x).shape)
    work = copy.deepcopy(model)
    t0 = time.perf_counter()
    try:
        heads, fixes = _tp_heads(work)
        pruner = tp.pruner.MetaPruner(
            work, example_inputs=x, importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio, ignored_layers=_output_layers(work), num_heads=heads,
            prune_num_heads=bool(heads), prune_head_dims=False, head_pruning_ratio=ratio,
            forward_fn=_forward)
        pruner.step()
        for f in fixes:
            f()
    except Exception as exc:  # reported, not hidden
        return {"ok": False, "error": _err(exc), "s": time.perf_counter() - t0, "dense": dense}
    s = time.perf_counter() - t0
    after = sum(p.numel() for p in work.parameters())
    try:
        with torch.no_grad():
            shape = tuple(_forward(work, x).shape)
        runs, err = shape == ref_shape, None if shape == ref_shape else \
            f"output shape {shape} instead of {ref_shape}"
    except Exception as exc:  # noqa: BLE001
        runs, err = False, _err(exc)
    gen = None
    if name in DECODERS and runs:
        try:
            gen = _generate_ok(work, x)
        except Exception as exc:  # noqa: BLE001
            gen, err = False, _err(exc)
    return {"ok": True, "s": s, "dense": dense, "after": after, "runs": runs, "generate": gen,
            "error": err}


REAL_SIZE = {
    # name: (config class, config kwargs, model class, inputs)
    "resnet-50": ("ResNetConfig", {}, "ResNetForImageClassification", "pixels224"),
    "mobilenetv2-1.0": ("MobileNetV2Config", {}, "MobileNetV2ForImageClassification", "pixels224"),
    "vit-base": ("ViTConfig", {}, "ViTForImageClassification", "pixels224"),
    "bert-base": ("BertConfig", {}, "BertModel", "tokens128"),
    "gpt2-small": ("GPT2Config", {}, "GPT2LMHeadModel", "tokens128"),
    "llama3-8b-2layers": ("LlamaConfig", {"num_hidden_layers": 2, "vocab_size": 1024,
                                          "hidden_size": 4096, "intermediate_size": 14336,
                                          "num_attention_heads": 32, "num_key_value_heads": 8},
                          "LlamaForCausalLM", "tokens128"),
}


def real_size(name: str) -> dict:
    """Discovery on a model of real width (random weights, default config): time,
    groups, and the check that the cost model counts every parameter."""
    import transformers as tr

    from optprune.nn.structures import discover

    cfg_cls, kw, model_cls, inp = REAL_SIZE[name]
    torch.manual_seed(0)
    model = getattr(tr, model_cls)(getattr(tr, cfg_cls)(**kw)).eval()
    g = torch.Generator().manual_seed(0)
    if inp == "pixels224":
        x = {"pixel_values": torch.randn(2, 3, 224, 224, generator=g)}
    else:
        x = {"input_ids": torch.randint(3, 1000, (2, 128), generator=g),
             "attention_mask": torch.ones(2, 128, dtype=torch.long)}
    dense = sum(p.numel() for p in model.parameters())
    gc.collect()
    gc.freeze()
    ok, out, s = _timed(lambda: discover(model, data=x))
    gc.unfreeze()
    row = {"model": name, "dense": dense, "ok": ok, "s": s}
    if ok:
        kinds: dict[str, int] = {}
        for grp in out.groups:
            kinds[grp.kind] = kinds.get(grp.kind, 0) + 1
        row.update(groups=len(out), kinds=kinds,
                   counts_all=out.predict(np.ones(len(out), dtype=bool))["params"] == dense)
    else:
        row["error"] = out
    return row


def _fmt_engine(e: dict) -> str:
    if not e["ok"]:
        return f"fails ({e['error'][:38]})"
    return f"{e['s']:.2f} s" + (f", {e['groups']} groups" if e.get("groups") is not None else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(zoo.MODELS))
    ap.add_argument("--budget", type=float, default=0.6, help="optprune: kept parameter fraction")
    ap.add_argument("--tp-ratio", type=float, default=0.3,
                    help="Torch-Pruning: fraction of channels and heads removed per layer")
    ap.add_argument("--time-limit", type=float, default=60.0, metavar="S",
                    help="optprune's allocation time limit")
    ap.add_argument("--tp-timeout", type=int, default=300, metavar="S",
                    help="Torch-Pruning runs longer than this are stopped and reported")
    ap.add_argument("--only", choices=["engines", "prune", "none"], help="one of the two tables")
    ap.add_argument("--real-size", action="store_true",
                    help="also discovery on models of real width (ResNet-50, MobileNetV2, "
                    "ViT-base, BERT-base, GPT-2, two LLaMA-3-8B layers)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    rows = [{"model": name} for name in args.models]
    print(f"load average at start: {os.getloadavg()[0]:.1f} (2 cores)")
    if args.only in (None, "engines"):
        engines("mlp")  # warm-up: first calls of fx / export / TP import and compile code
        _engines_table(args.models, rows)
    if args.only in (None, "prune"):
        _prune_table(args, rows)
    if args.real_size:
        print("\n| model (real width, random weights) | parameters | discover | groups by kind "
              "| predict(all kept) = parameters |")
        print("|---|---|---|---|---|")
        for name in REAL_SIZE:
            r = real_size(name)
            rows.append({"real_size": r})
            cell = f"{r['s']:.1f} s" if r["ok"] else f"fails ({r['error'][:50]})"
            kinds = ", ".join(f"{v:,} {k}" for k, v in r.get("kinds", {}).items())
            print(f"| {name} | {r['dense']:,} | {cell} | {kinds} | {r.get('counts_all', '')} |",
                  flush=True)
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


def _engines_table(models: list[str], rows: list[dict]) -> None:
    print("\n| model | fx | torch.export | TP DependencyGraph | optprune discover |")
    print("|---|---|---|---|---|")
    for row, name in zip(rows, models):
        gc.collect()
        r = engines(name)
        row["engines"] = r
        print(f"| {name} | {_fmt_engine(r['fx'])} | {_fmt_engine(r['export'])} | "
              f"{_fmt_engine(r['tp_graph'])} | {_fmt_engine(r['optprune'])} |", flush=True)


def _prune_table(args: argparse.Namespace, rows: list[dict]) -> None:
    print("\n| model | dense params | optprune: after = predicted | termination | max err "
          "| generate | time | TP: after | TP runs | TP generate | TP time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row, name in zip(rows, args.models):
        gc.collect()
        try:
            o = run_optprune(name, args.budget, args.time_limit)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            o = {"ok": False, "error": "crashed", "s": 0, "dense": 0}
        t = run_tp(name, args.tp_ratio, args.tp_timeout)
        row.update({"optprune": o, "tp": t})
        if o["ok"]:
            ocell = (f"{o['after']:,} = {o['predicted']:,}" if o["after"] == o["predicted"]
                     else f"{o['after']:,} != {o['predicted']:,}")
            term = f"{o['termination']} (gap {o['gap']:.0e})" if o["gap"] is not None \
                else str(o["termination"])
            oerr, ogen, os_ = f"{o['max_err']:.1e}", o["generate"], f"{o['s']:.1f} s"
        else:
            ocell, term, oerr, ogen, os_ = f"fails ({o['error'][:40]})", "", "", "", ""
        if t["ok"]:
            tcell, truns, tgen = f"{t['after']:,}", "yes" if t["runs"] else \
                f"no ({(t['error'] or '')[:40]})", t["generate"]
        else:
            tcell, truns, tgen = f"fails ({t['error'][:40]})", "", ""
        print(f"| {name} | {o['dense']:,} | {ocell} | {term} | {oerr} | "
              f"{'' if ogen is None else ogen} | {os_} | {tcell} | {truns} | "
              f"{'' if tgen is None else tgen} | {t['s']:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
