"""The problem format says what the code does: every default and requirement the
schema states is the one the code applies (schema, formulations/allocation.md and
code checked together)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from optprune.alloc import AllocationProblem
from optprune.alloc.problem import FORMAT
from optprune.alloc.schema import SCHEMA_PATH, validate_document
from optprune.errors import ValidationError

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def doc() -> dict:
    """Two slots of 3, scores 1..6, params 2 each, flops 1 each."""
    return {"format": FORMAT, "name": "contract",
            "structures": {"ids": [f"s{i}" for i in range(6)], "layer": ["a"] * 3 + ["b"] * 3,
                           "kind": ["h"] * 6, "score": [1.0, 2, 3, 4, 5, 6],
                           "costs": {"params": [2.0] * 6, "flops": [1.0] * 6}},
            "constraints": {"budgets": [{"resource": "params", "max": 8}]}}


def schema_at(*path: str) -> dict:
    """The schema node of a property path, through arrays' items, refs and allOf/anyOf."""
    node = SCHEMA
    for key in path:
        node = _resolve(node)
        if node.get("type") == "array":
            node = _resolve(node["items"])
        props = dict(node.get("properties", {}))
        for part in node.get("allOf", []) + node.get("anyOf", []) + node.get("oneOf", []):
            props.update(_resolve(part).get("properties", {}))
        node = props[key]
    return _resolve(node)


def _resolve(node: dict) -> dict:
    while "$ref" in node:
        name = node["$ref"].split("/")[-1]
        node = SCHEMA.get("$defs", SCHEMA.get("definitions", {}))[name]
    return node


def test_allow_zero_defaults_to_true_in_schema_and_code():
    assert schema_at("constraints", "multiples", "allow_zero")["default"] is True
    d = doc()
    d["constraints"]["multiples"] = [{"layer": "a", "multiple": 2}]
    p = AllocationProblem.from_dict(d)
    assert p.slot_count_range(("a", "h"))[3] is True
    assert 0 in p.allowed_counts(("a", "h")).tolist()


def test_a_min_resource_floor_is_relative_by_default_and_required():
    node = schema_at("objective")
    assert node["properties"]["relative"]["default"] is True
    assert "relative' (the default)" in node["properties"]["importance_floor"]["description"]
    d = doc()
    d["objective"] = {"kind": "min_resource", "resource": "params", "importance_floor": 0.5}
    p = AllocationProblem.from_dict(d)
    assert p.importance_floor_abs() == pytest.approx(0.5 * 21.0)
    missing = copy.deepcopy(d)
    del missing["objective"]["importance_floor"]
    with pytest.raises(ValidationError, match="importance_floor"):
        validate_document(missing)
    with pytest.raises(ValidationError, match="importance_floor"):
        AllocationProblem.from_dict(missing)


def test_a_relative_budget_counts_pair_costs_at_full_width():
    assert "pair costs at full width" in schema_at("constraints", "budgets")["description"] \
        or "pair costs at full width" in SCHEMA_PATH.read_text()
    d = doc()
    d["constraints"]["budgets"] = [{"resource": "params", "max": 0.5, "relative": True}]
    d["constraints"]["pair_costs"] = [{"resource": "params", "slot_a": ["a", "h"],
                                       "slot_b": ["b", "h"], "coef": 1.0}]
    p = AllocationProblem.from_dict(d)
    assert p.dense_total("params") == pytest.approx(12.0 + 3 * 3 * 1.0)
    (_, _, hi), = p.budget_limits()
    assert hi == pytest.approx(0.5 * 21.0)


def test_latency_tables_need_width_plus_one_entries():
    assert "exactly width + 1 entries" in schema_at(
        "constraints", "latency", "tables", "table")["description"]
    d = doc()
    d["constraints"]["latency"] = {"tables": [{"layer": "a", "kind": "h",
                                               "table": [0.0, 1.0, 2.0]}], "cap": 2.0}
    with pytest.raises(ValidationError, match="4|width"):
        AllocationProblem.from_dict(d)
    d["constraints"]["latency"]["tables"][0]["table"] = [0.0, 1.0, 2.0, 3.0]
    p = AllocationProblem.from_dict(d)
    assert np.array_equal(p.latency_tables[("a", "h")].table, [0.0, 1.0, 2.0, 3.0])


def test_a_budget_on_latency_names_the_json_path():
    assert schema_at("constraints", "budgets", "resource")["not"] == {"const": "latency"}
    d = doc()
    d["constraints"]["budgets"] = [{"resource": "latency", "max": 3.0}]
    with pytest.raises(ValidationError, match="constraints/latency/cap|constraints.latency.cap"):
        AllocationProblem.from_dict(d)
