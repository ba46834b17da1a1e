"""Validation of allocation problem documents against ``problem.schema.json``.

Every entry of every array is checked. A JSON Schema validator walks a document one
Python object at a time, too slow for the per-structure arrays of a large model
(millions of entries), so the walk below splits the document first: a long array
whose item schema uses only ``type``, ``minimum``, ``maximum``, ``minItems``,
``maxItems`` and ``items`` is checked entry by entry by a small interpreter of
exactly those keywords (the same schema, read from the same file), and the
validator sees the rest of the document with that array cut to its first entries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ValidationError

SCHEMA_PATH = Path(__file__).with_name("problem.schema.json")
# Arrays longer than this, with simple items, are checked by the interpreter below.
_FAST_MIN_LENGTH = 16
_SIMPLE_KEYS = {"type", "minimum", "maximum", "minItems", "maxItems", "items", "description"}
# The deepest nesting a problem document has (structures/costs/R/[i] is 4 levels,
# latency tables 5); anything far deeper is refused before any recursion.
MAX_DEPTH = 12

_SCHEMA: dict[str, Any] | None = None

# How to bring numbers into the usable range (said with every range error).
RESCALE = {
    "score": "multiplying every score (and slot value) by one positive number does not "
             "change the optimal selection",
    "cost": "express the resource in larger units (millions of parameters, say), dividing "
            "its costs, fixed costs, pair costs and absolute budgets by the same number",
}


def _hint(where: str, message: str) -> str:
    if "maximum" not in message and "minimum" not in message:
        return ""
    if "score" in where or "slot_values" in where or "importance_floor" in where:
        return f" Rescale: {RESCALE['score']}."
    if where.startswith(("structures/costs", "fixed_costs", "constraints/budgets",
                         "constraints/pair_costs", "constraints/latency")):
        return f" Rescale: {RESCALE['cost']}."
    return ""


def _short(message: str) -> str:
    """Long digit runs (a 400-digit integer) shortened in a message."""
    import re

    return re.sub(r"\d{25,}", lambda m: f"<a {len(m.group())}-digit number>", message)


def schema() -> dict[str, Any]:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = json.loads(SCHEMA_PATH.read_text())
    return _SCHEMA


def _is_type(v: Any, t: str) -> bool:
    if t == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t == "integer":
        return (isinstance(v, int) and not isinstance(v, bool)) or (
            isinstance(v, float) and v.is_integer())
    if t == "string":
        return isinstance(v, str)
    if t == "null":
        return v is None
    if t == "boolean":
        return isinstance(v, bool)
    if t == "array":
        return isinstance(v, list)
    if t == "object":
        return isinstance(v, dict)
    raise AssertionError(t)


def _simple(item: dict[str, Any]) -> bool:
    if not isinstance(item, dict) or not set(item) <= _SIMPLE_KEYS or "type" not in item:
        return False
    return "items" not in item or _simple(item["items"])


def _check_simple(v: Any, item: dict[str, Any]) -> str | None:
    """The first way ``v`` breaks the simple schema ``item``, or None."""
    types = item["type"] if isinstance(item["type"], list) else [item["type"]]
    if not any(_is_type(v, t) for t in types):
        return f"{_show(v)} is not of type {' or '.join(repr(t) for t in types)}"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in item and v < item["minimum"]:
            return f"{_show(v)} is less than the minimum of {item['minimum']}"
        if "maximum" in item and v > item["maximum"]:
            return f"{_show(v)} is greater than the maximum of {item['maximum']}"
    if isinstance(v, list):
        if "minItems" in item and len(v) < item["minItems"]:
            return f"{_show(v)} should have at least {item['minItems']} items"
        if "maxItems" in item and len(v) > item["maxItems"]:
            return f"{_show(v)} should have at most {item['maxItems']} items"
        if "items" in item:
            for e in v:
                why = _check_simple(e, item["items"])
                if why:
                    return why
    return None


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _split(doc: Any, sch: dict[str, Any], path: list[str], depth: int,
           fast: list[tuple[str, list, dict]]) -> Any:
    """``doc`` with long simple arrays cut (recorded in ``fast``), recursively."""
    if depth > MAX_DEPTH:
        raise ValidationError(
            f"The problem document is invalid at {'/'.join(path)}: nested deeper than "
            f"{MAX_DEPTH} levels; a problem document is at most a few levels deep.")
    if isinstance(doc, dict):
        props = sch.get("properties", {})
        extra = sch.get("additionalProperties")
        out = {}
        for k, v in doc.items():
            sub = props.get(k, extra if isinstance(extra, dict) else {})
            out[k] = _split(v, sub, path + [str(k)], depth + 1, fast)
        return out
    if isinstance(doc, list):
        item = sch.get("items")
        if isinstance(item, dict) and len(doc) > _FAST_MIN_LENGTH and _simple(item):
            fast.append(("/".join(path), doc, item))
            return doc[:max(1, int(sch.get("minItems", 1)))]
        return [_split(v, item if isinstance(item, dict) else {}, path + [str(i)], depth + 1,
                       fast) for i, v in enumerate(doc)]
    return doc


def validate_document(d: Any) -> None:
    """Check a problem document against ``problem.schema.json``, every entry of
    every array; the error names the path of the first violation."""
    import jsonschema

    sch = schema()
    fast: list[tuple[str, list, dict]] = []
    skeleton = _split(d, sch, [], 0, fast)
    for where, arr, item in fast:
        for i, v in enumerate(arr):
            why = _check_simple(v, item)
            if why:
                raise ValidationError(f"The problem document is invalid at {where}/{i}: "
                                      f"{_short(why)}." + _hint(where, why))
    validator = jsonschema.Draft202012Validator(sch)
    errors = sorted(validator.iter_errors(skeleton), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        more = f" ({len(errors) - 1} more)" if len(errors) > 1 else ""
        # The schema's own words for what the failing node expects, when it has them.
        said = e.schema.get("description") if isinstance(e.schema, dict) else None
        expected = f" Expected {said}." if said else ""
        raise ValidationError(f"The problem document is invalid at {where}: "
                              f"{_short(e.message)}{more}.{expected}" + _hint(where, e.message))


__all__ = ["validate_document", "schema", "SCHEMA_PATH", "MAX_DEPTH", "RESCALE"]
