"""The instance library's MANIFEST.json: reading, schema checks, and paths that stay inside.

Every name and path a MANIFEST holds is checked *before* any file is opened:

* an instance or network name is one path component of letters, digits and ``. _ + -``
  (not starting with a dot, at most 200 characters): it cannot leave the library;
* a file path (``network``, a set's network ``file``) is relative, uses ``/``, has no
  ``..``, ``.`` or empty component, and resolves (symbolic links followed) to a place
  inside the library directory.

``load_manifest`` reads the file (UTF-8 JSON, no NaN/Infinity, bounded nesting) and
checks the whole document against the schema below; a malformed document raises one
``ValidationError`` that lists its problems (the first few) on one line.

    {"format": str?, "generator": str?,
     "instances": {NAME: {"mps_sha256": HEX64, "json_sha256": HEX64,
                          "network": PATH?, "network_sha256": HEX64 (with network),
                          "set": str?, "seed": int?, "binaries"|"columns"|"rows": int >= 0?,
                          "known": {"termination": str, "objective": num|null,
                                    "bound": num|null, "time_limit_s": num > 0|null,
                                    "confirmed_by": {...}?, "best_input": [num]?, ...}?,
                          ...}},
     "sets": {NAME: {"instances": [NAME, ...]?,
                     "networks": {NAME: {"file": PATH, "file_sha256": HEX64,
                                         "network_sha256": HEX64?, ...}}?, ...}}?}

(``?``: optional; other keys are free.)
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ValidationError

__all__ = ["MANIFEST", "check_name", "library_path", "load_manifest", "validate_manifest",
           "empty_manifest", "read_json"]

MANIFEST = "MANIFEST.json"
FORMAT = "optprune.instances/1"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_DEPTH = 32
CLASSES = ("easy", "medium", "hard", "open")
_MAX_LISTED = 5


def empty_manifest(generator: str) -> dict[str, Any]:
    return {"format": FORMAT, "generator": generator, "sets": {}, "instances": {}}


def name_problem(name: Any) -> str | None:
    """Why ``name`` is not a safe instance / network name, or None."""
    if not isinstance(name, str):
        return f"a name must be a string, got {type(name).__name__}"
    if not _NAME.fullmatch(name):
        return (f"name {name[:60]!r} is not one path component of letters, digits and "
                "'._+-' (not starting with a dot, at most 200 characters)")
    return None


def check_name(name: Any, what: str = "The instance name") -> str:
    """``name`` if it is a safe file name stem; a ValidationError otherwise."""
    why = name_problem(name)
    if why is not None:
        raise ValidationError(f"{what} must be a single file name, no directory part; {why}. "
                              "Use e.g. 'digits-2x50-dense-s0-i0-linf'.")
    return name


def path_problem(rel: Any, directory: Path | None = None) -> str | None:
    """Why ``rel`` is not a safe path inside ``directory``, or None (nothing is opened)."""
    if not isinstance(rel, str):
        return f"a path must be a string, got {type(rel).__name__}"
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        return (f"path {rel[:80]!r} must be relative to the library, with '/' between "
                "components and no '..', '.' or empty component")
    if directory is not None:
        root = Path(directory).resolve()
        full = (root / rel).resolve()
        if full != root and root not in full.parents:
            return f"path {rel[:80]!r} resolves outside the library (a symbolic link?)"
    return None


def library_path(directory: str | os.PathLike, rel: Any, what: str = "A library path") -> Path:
    """``directory / rel`` after checking that it stays inside ``directory``."""
    why = path_problem(rel, Path(directory))
    if why is not None:
        raise ValidationError(f"{what} must stay inside the library {str(directory)!r}; {why}.")
    return Path(directory) / rel


def _depth_ok(obj: Any, depth: int = 0) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if isinstance(obj, dict):
        return all(_depth_ok(v, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return all(_depth_ok(v, depth + 1) for v in obj)
    return True


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse ``path`` as strict UTF-8 JSON (no NaN / Infinity); one ValidationError for
    a missing, unreadable, non-UTF-8, malformed or too deeply nested file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"{what} {str(path)!r} cannot be read ({exc.strerror or exc}).") \
            from exc
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{what} {str(path)!r} is not UTF-8 text (byte {exc.start}); "
                              "regenerate it.") from exc
    except RecursionError as exc:
        raise ValidationError(f"{what} {str(path)!r} is nested too deeply to be a valid "
                              "document; regenerate it.") from exc
    except ValueError as exc:  # JSONDecodeError and the NaN / Infinity refusal
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValidationError(f"{what} {str(path)!r} is not valid JSON ({msg}); "
                              "regenerate it.") from exc
    if not _depth_ok(obj):
        raise ValidationError(f"{what} {str(path)!r} is nested deeper than {_MAX_DEPTH} levels; "
                              "it is not a valid document. Regenerate it.")
    return obj


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _hex(v: Any) -> bool:
    return isinstance(v, str) and _HEX64.fullmatch(v) is not None


class _Problems(list):
    def add(self, where: str, what: str) -> None:
        self.append(f"{where}: {what}")


def _check_known(p: _Problems, where: str, known: Any) -> None:
    if not isinstance(known, dict):
        p.add(where, "'known' must be an object")
        return
    if not isinstance(known.get("termination"), str):
        p.add(where, "'known.termination' must be a string")
    for key in ("objective", "bound", "gap"):
        if key in known and known[key] is not None and not _is_num(known[key]):
            p.add(where, f"'known.{key}' must be a finite number or null")
    t = known.get("time_limit_s")
    if t is not None and not (_is_num(t) and t > 0):
        p.add(where, "'known.time_limit_s' must be a positive number or null")
    conf = known.get("confirmed_by")
    if conf is not None and not isinstance(conf, dict):
        p.add(where, "'known.confirmed_by' must be an object")
    best = known.get("best_input")
    if best is not None and not (isinstance(best, list) and all(_is_num(v) for v in best)):
        p.add(where, "'known.best_input' must be a list of finite numbers")


def _entry(p: _Problems, label: str, name: Any, e: Any) -> str | None:
    """Where a ``NAME: {...}`` entry is, if its name is safe and it is an object; None
    after recording why not."""
    where = f"{label} {str(name)[:60]!r}"
    why = name_problem(name)
    if why is not None:
        p.add(where, why)
    elif not isinstance(e, dict):
        p.add(where, "the entry must be an object")
    else:
        return where
    return None


def _check_instance(p: _Problems, name: Any, e: Any, directory: Path | None) -> None:
    where = _entry(p, "instance", name, e)
    if where is None:
        return
    for key in ("mps_sha256", "json_sha256"):
        if not _hex(e.get(key)):
            p.add(where, f"'{key}' must be 64 lowercase hex digits")
    if "sol_sha256" in e and not _hex(e["sol_sha256"]):
        p.add(where, "'sol_sha256' must be 64 lowercase hex digits")
    if "class" in e and e["class"] not in CLASSES:
        p.add(where, f"'class' must be one of {', '.join(CLASSES)}")
    if "network" in e:
        why = path_problem(e["network"], directory)
        if why is not None:
            p.add(where, f"'network': {why}")
        if not _hex(e.get("network_sha256")):
            p.add(where, "'network_sha256' must be 64 lowercase hex digits")
    if "set" in e and not isinstance(e["set"], str):
        p.add(where, "'set' must be a string")
    if "seed" in e and not _is_int(e["seed"]):
        p.add(where, "'seed' must be an integer")
    for key in ("binaries", "columns", "rows"):
        if key in e and not (_is_int(e[key]) and e[key] >= 0):
            p.add(where, f"'{key}' must be an integer >= 0")
    if "known" in e:
        _check_known(p, where, e["known"])


def _check_set(p: _Problems, name: Any, s: Any, directory: Path | None) -> None:
    where = _entry(p, "set", name, s)
    if where is None:
        return
    inst = s.get("instances", [])
    if not isinstance(inst, list) or any(name_problem(n) for n in inst):
        p.add(where, "'instances' must be a list of instance names")
    nets = s.get("networks", {})
    if not isinstance(nets, dict):
        p.add(where, "'networks' must be an object")
        return
    for nid, info in nets.items():
        w = _entry(p, f"{where} network", nid, info)
        if w is None:
            continue
        why = path_problem(info.get("file"), directory)
        if why is not None:
            p.add(w, f"'file': {why}")
        if not _hex(info.get("file_sha256")):
            p.add(w, "'file_sha256' must be 64 lowercase hex digits")
        if "network_sha256" in info and not _hex(info["network_sha256"]):
            p.add(w, "'network_sha256' must be 64 lowercase hex digits")
        if "test_accuracy" in info and info["test_accuracy"] is not None \
                and not _is_num(info["test_accuracy"]):
            p.add(w, "'test_accuracy' must be a number")


def validate_manifest(man: Any, directory: str | os.PathLike | None = None,
                      where: str = MANIFEST) -> dict[str, Any]:
    """``man`` if it follows the schema (module docstring); one ValidationError listing
    the problems otherwise. With ``directory``, paths are also resolved against it."""
    d = None if directory is None else Path(directory)
    p = _Problems()
    if not isinstance(man, dict):
        p.add("the document", f"must be a JSON object, got {type(man).__name__}")
    else:
        for key in ("format", "generator"):
            if key in man and not isinstance(man[key], str):
                p.add("the document", f"'{key}' must be a string")
        inst = man.get("instances")
        if not isinstance(inst, dict):
            p.add("the document", "'instances' must be an object of NAME: entry")
        else:
            for name, e in inst.items():
                _check_instance(p, name, e, d)
        sets = man.get("sets", {})
        if not isinstance(sets, dict):
            p.add("the document", "'sets' must be an object")
        else:
            for name, s in sets.items():
                _check_set(p, name, s, d)
    if p:
        more = f" (and {len(p) - _MAX_LISTED} more)" if len(p) > _MAX_LISTED else ""
        raise ValidationError(
            f"{where} does not follow the instance MANIFEST schema: "
            f"{'; '.join(p[:_MAX_LISTED])}{more}. Regenerate it with `optprune instances "
            "generate` or fix the entries named.")
    return man


def load_manifest(directory: str | os.PathLike, generator: str,
                  missing_ok: bool = True) -> dict[str, Any]:
    """The checked MANIFEST of the library ``directory`` (an empty one if there is none
    and ``missing_ok``)."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        if missing_ok:
            man = empty_manifest(generator)
            return man
        raise ValidationError(f"There is no {MANIFEST} in {str(directory)!r}; generate a set "
                              "first (`optprune instances generate SET --dir DIR`).")
    man = validate_manifest(read_json(path, "The instance MANIFEST"), directory, str(path))
    man.setdefault("sets", {})
    return man
