"""Natural English sentences available offline, and sentence-embedding quality.

The sentences are the first sentences of the docstrings (modules, classes,
functions) of the Python standard library that runs this code, read with ``ast``
(nothing is imported or executed). Cleaning, in order:

1. first paragraph of the docstring, whitespace collapsed;
2. cut after the first sentence end (". ", "? ", "! " not after an abbreviation
   such as "e.g." or a single letter);
3. keep it only if it starts with an upper-case letter, ends with ".", is ASCII,
   has ``min_words`` .. ``max_words`` words, at least 80% of them plain words
   (letters, optional trailing punctuation), and no code markers
   (``_ ( ) [ ] { } = < > ` * | \\ @ # $ % ~ ::`` or "http");
4. deduplicated case-insensitively, keeping the first in file order
   (files sorted by path; within a file in ``ast.walk`` order).

The result depends only on the standard library's sources, so it is the same on
every run of one Python version. :func:`split_corpus` assigns each sentence to the
scoring set or the held-out evaluation set by a SHA-256 hash of (seed, sentence):
deterministic, and a sentence never moves between sets when others are added.

Quality of a pruned sentence encoder: :func:`sentence_embeddings` (mean pooling
over non-padding tokens, then L2 normalisation, exactly as sentence-transformers
runs all-MiniLM-L6-v2) and :func:`mean_cosine` = mean_i <e_i, e'_i> / (|e_i| |e'_i|)
between dense and pruned embeddings of the same held-out sentences.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import sysconfig
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ValidationError, check
from .hf import mean_pool

__all__ = ["CorpusSplit", "stdlib_sentences", "split_corpus", "load_corpus", "pack_token_ids",
           "sentence_embeddings", "mean_cosine"]

_SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3",
              "__pycache__", "turtledemo", "ensurepip", "tkinter", "pydoc_data"}
_CODE = re.compile(r"[_()\[\]{}=<>`*|\\@#$%~^]|::|http|\.\.\.|--")
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*[.,;:!?]?$")
_ABBREV = {"e.g.", "i.e.", "etc.", "vs.", "cf.", "mr.", "dr.", "no.", "approx.", "resp.",
           "incl.", "esp.", "al."}


@dataclass(frozen=True)
class CorpusSplit:
    """Sentences for scoring (calibration) and held-out sentences for evaluation."""

    score: tuple[str, ...]
    eval: tuple[str, ...]


def _first_sentence(doc: str) -> str:
    para = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    words = " ".join(para.split()).split(" ")
    out = []
    for i, w in enumerate(words):
        out.append(w)
        if w.endswith((".", "?", "!")) and w.lower() not in _ABBREV and \
                not re.fullmatch(r"[A-Za-z]\.", w) and i + 1 < len(words) and \
                words[i + 1][:1].isupper():
            break
    return " ".join(out)


def _clean(s: str, min_words: int, max_words: int) -> str | None:
    if not s or not s[0].isupper() or not s.endswith(".") or not s.isascii():
        return None
    if _CODE.search(s):
        return None
    words = s.split()
    if not (min_words <= len(words) <= max_words):
        return None
    plain = sum(bool(_WORD.match(w)) for w in words)
    if plain < 0.8 * len(words):
        return None
    return s


def _stdlib_files(root: str) -> list[str]:
    files = []
    for d, dirs, fs in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS and not x.startswith("."))
        files += [os.path.join(d, f) for f in sorted(fs) if f.endswith(".py")]
    return sorted(files)


@functools.lru_cache(maxsize=8)
def stdlib_sentences(min_words: int = 6, max_words: int = 32,
                     stdlib_dir: str | None = None) -> tuple[str, ...]:
    """Cleaned first sentences of the standard library's docstrings (see the module
    docstring), in deterministic order. Parsing the library takes a few seconds; the
    result is cached per argument set."""
    check(isinstance(min_words, int) and isinstance(max_words, int) and
          1 <= min_words <= max_words, "The word range (min_words, max_words)",
          "two ints with 1 <= min_words <= max_words", (min_words, max_words))
    root = stdlib_dir or sysconfig.get_paths()["stdlib"]
    check(os.path.isdir(root), "The standard library directory", "an existing directory",
          root, "Pass stdlib_dir= explicitly.")
    seen: set[str] = set()
    out: list[str] = []
    for path in _stdlib_files(root):
        try:
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue  # a few test fixtures are deliberately broken
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            s = _clean(_first_sentence(doc), min_words, max_words)
            if s is not None and s.lower() not in seen:
                seen.add(s.lower())
                out.append(s)
    if not out:
        raise ValidationError(
            f"No sentences were found in {root!r}; expected the Python standard library's "
            "sources (.py files). Pass stdlib_dir= pointing at them.")
    return tuple(out)


def split_corpus(sentences: Sequence[str], eval_fraction: float = 0.5,
                 seed: int = 0) -> CorpusSplit:
    """Split by hash: sentence s goes to ``eval`` when
    int(sha256(f"{seed}:{s}")[:16], 16) / 2^64 < eval_fraction, else to ``score``."""
    check(0.0 < eval_fraction < 1.0, "The 'eval_fraction' of split_corpus", "in (0, 1)",
          eval_fraction)
    check(len(sentences) >= 2, "The number of sentences of split_corpus", "at least 2",
          len(sentences))
    score: list[str] = []
    held: list[str] = []
    for s in sentences:
        h = int(hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()[:16], 16) / 2.0 ** 64
        (held if h < eval_fraction else score).append(s)
    return CorpusSplit(tuple(score), tuple(held))


def load_corpus(eval_fraction: float = 0.5, seed: int = 0, min_words: int = 6,
                max_words: int = 32, stdlib_dir: str | None = None) -> CorpusSplit:
    """:func:`stdlib_sentences` split by :func:`split_corpus` (``stdlib_dir`` may name
    one package of the library, e.g. ``<stdlib>/asyncio``, for a quick small corpus)."""
    return split_corpus(stdlib_sentences(min_words, max_words, stdlib_dir), eval_fraction, seed)


def pack_token_ids(tokenizer: Any, sentences: Sequence[str], seq_len: int,
                   n_sequences: int | None = None) -> torch.Tensor:
    """Calibration sequences without padding: the sentences' tokens, each followed by
    [SEP], concatenated and cut into rows [CLS] t_1 .. t_{seq_len-2} [SEP] of exactly
    ``seq_len`` tokens (a partial last row is dropped). Padding would feed pad
    positions into the consumers' input statistics (Wanda, FLAP); packing avoids it.
    Returns a LongTensor (N, seq_len), N <= ``n_sequences`` when given."""
    check(isinstance(seq_len, int) and seq_len >= 3, "The 'seq_len' of pack_token_ids",
          "an int >= 3 ([CLS], a token, [SEP])", seq_len)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    check(cls_id is not None and sep_id is not None, "The tokenizer of pack_token_ids",
          "a BERT-style tokenizer with [CLS] and [SEP] tokens", type(tokenizer).__name__)
    enc = tokenizer(list(sentences), add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for ids in enc:
        stream += list(ids) + [sep_id]
    body = seq_len - 2
    n = len(stream) // body
    if n_sequences is not None:
        n = min(n, int(n_sequences))
    check(n > 0, "The number of packed sequences", "positive (give more sentences or a "
          "shorter seq_len)", n)
    rows = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    out = np.empty((n, seq_len), dtype=np.int64)
    out[:, 0], out[:, -1], out[:, 1:-1] = cls_id, sep_id, rows
    return torch.from_numpy(out)


def sentence_embeddings(model: nn.Module, tokenizer: Any, sentences: Sequence[str],
                        batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """Sentence embeddings (N, d) of a BERT-family base model: tokenize with padding
    and truncation to ``max_length``, run in eval mode without gradients, mean-pool
    the last hidden states over the attention mask, L2-normalise."""
    check(len(sentences) > 0, "The number of sentences of sentence_embeddings", "positive",
          len(sentences))
    check(isinstance(batch_size, int) and batch_size >= 1, "The 'batch_size' of "
          "sentence_embeddings", "a positive int", batch_size)
    was = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for i in range(0, len(sentences), batch_size):
                b = tokenizer(list(sentences[i:i + batch_size]), padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
                hidden = model(input_ids=b["input_ids"],
                               attention_mask=b["attention_mask"]).last_hidden_state
                out.append(mean_pool(hidden, b["attention_mask"]))
    finally:
        model.train(was)
    return torch.cat(out)


def mean_cosine(dense_emb: torch.Tensor | np.ndarray, pruned_emb: torch.Tensor | np.ndarray) -> float:
    """mean_i cos(dense_i, pruned_i), rows paired; 1.0 means identical directions.
    A zero row has cosine 0 with anything."""
    a = torch.as_tensor(np.asarray(dense_emb) if isinstance(dense_emb, np.ndarray) else dense_emb)
    b = torch.as_tensor(np.asarray(pruned_emb) if isinstance(pruned_emb, np.ndarray) else pruned_emb)
    check(a.dim() == 2 and a.shape == b.shape, "The embeddings of mean_cosine",
          f"two (N, d) arrays of one shape (dense {tuple(a.shape)})", tuple(b.shape))
    check(a.shape[0] > 0, "The number of embeddings of mean_cosine", "positive", a.shape[0])
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp(min=1e-300)
    cos = torch.where((na > 0) & (nb > 0), cos, torch.zeros_like(cos))
    return float(cos.mean())
