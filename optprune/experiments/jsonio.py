"""JSON the project writes: one encoder for what ``json`` does not know, one policy for
non-finite floats, one atomic writer.

Imports the standard library and numpy only, so the solver side (``optprune.solve``,
``optprune.alloc``) uses it without torch.

* :func:`to_jsonable` turns numpy scalars and arrays, dataclasses, objects with a
  ``to_dict()``, enums, paths, sets and tuples, and anything with ``tolist()`` (torch
  tensors) into plain JSON values, recursively.
* Non-finite floats (``inf``, ``-inf``, ``nan``) are not JSON. ``nonfinite="null"`` (the
  default) writes them as ``null``, the convention of every result document of the
  project (a gap of ``inf`` means "no bound", read back as ``None``);
  ``nonfinite="error"`` refuses them with a ValidationError naming the key.
* :func:`write_json_atomic` writes to a temporary file with a unique name in the
  target's folder and renames it over the target: a reader never sees a partial file,
  and concurrent writers of one path never share a temporary file (the last rename
  wins, whole).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import uuid
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..errors import ValidationError

__all__ = ["NONFINITE", "dumps", "json_default", "to_jsonable", "write_json_atomic"]

NONFINITE = ("null", "error")


def json_default(o: Any) -> Any:
    """``default=`` for ``json.dump``: one level of conversion of what ``json`` does not
    know (the caller's encoder recurses into the result). Raises TypeError otherwise,
    as ``json`` expects."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):  # numpy bool, integer, floating scalars
        return o.item()
    if hasattr(o, "to_dict") and callable(o.to_dict):
        return o.to_dict()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, PurePath):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=repr)
    if hasattr(o, "tolist") and callable(o.tolist):  # torch tensors, array scalars
        return o.tolist()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def to_jsonable(obj: Any, nonfinite: str = "null", _where: str = "$") -> Any:
    """A copy of ``obj`` made of dict / list / str / int / float / bool / None only, with
    non-finite floats handled by ``nonfinite`` ("null" or "error")."""
    if nonfinite not in NONFINITE:
        raise ValidationError(f"The 'nonfinite' policy must be one of {NONFINITE}; got "
                              f"{nonfinite!r}.")
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if nonfinite == "error":
            raise ValidationError(f"The value at {_where} must be a finite number to be "
                                  f"written as JSON; got {obj!r}. Replace it by None or use "
                                  "nonfinite='null'.")
        return None
    if isinstance(obj, dict):
        return {_key(k): to_jsonable(v, nonfinite, f"{_where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nonfinite, f"{_where}[{i}]") for i, v in enumerate(obj)]
    return to_jsonable(json_default(obj), nonfinite, _where)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, (np.generic, enum.Enum)):
        k = json_default(k)
    if isinstance(k, (int, float, bool)) or k is None:
        return json.dumps(k)
    raise ValidationError(f"JSON object keys must be strings or numbers; got a "
                          f"{type(k).__name__} key {k!r}.")


def dumps(obj: Any, indent: int | None = 2, nonfinite: str = "null") -> str:
    """Strict JSON text of ``obj`` (no ``NaN`` / ``Infinity`` literals)."""
    return json.dumps(to_jsonable(obj, nonfinite), indent=indent, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2,
                      nonfinite: str = "null") -> Path:
    """Write ``obj`` as JSON to ``path`` through a uniquely named temporary file in the
    same folder and an atomic rename; returns the path. Never leaves a partial file."""
    path = Path(path)
    text = dumps(obj, indent, nonfinite) + "\n"  # encode first: a bad value writes nothing
    if not path.parent.is_dir():
        raise ValidationError(f"The folder of {str(path)!r} does not exist; create it first.")
    # pid + random part: unique across processes and threads; "x" refuses to reuse a name,
    # and the file gets the usual permissions (umask), unlike tempfile.mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
