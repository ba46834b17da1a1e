"""Why an allocation problem is infeasible, in the problem's own terms.

First choice: HiGHS's irreducible infeasible subsystem (``Highs.getIis``, LP only in
HiGHS 1.16) of the model's LP relaxation. When the relaxation is infeasible, its IIS
is a set of rows that cannot hold together even fractionally (so not with integral
widths either), and removing any one of them makes the relaxation feasible; each
row is named by the constraint it states (which budget, which slot's counts, which
group, ...). When the relaxation is feasible, the conflict needs integrality
(multiples, staircases, groups) and the IIS has nothing to say: then each constraint
family is dropped in turn and those whose removal makes the problem feasible are named.
"""

from __future__ import annotations

import copy
import re

import numpy as np

from ..errors import InfeasibleProblemError
from .formulate import formulate
from .problem import AllocationProblem, Slot

# Rows that state no constraint of their own: they define variables (one width per
# slot, counts, segments, products). In an IIS they stand for the slot's allowed
# widths.
_STRUCTURAL = ("one_width", "one_count", "count_link", "one_seg", "seg_lo", "seg_hi")


def explain_infeasible(problem: AllocationProblem, backend: str = "highs") -> str:
    rows = iis_constraints(problem)
    if rows:
        return ("No selection satisfies every constraint. These conflict (an irreducible "
                "infeasible set of the LP relaxation, computed by HiGHS; dropping any one "
                "of them resolves it): " + "; ".join(rows) + ".")
    return _families(problem, backend)


def iis_constraints(problem: AllocationProblem) -> list[str]:
    """The constraints of an IIS of the LP relaxation, described; [] when the
    relaxation is feasible or HiGHS finds none."""
    import highspy

    from ..solve.backends.highs import highs_from_model

    form = formulate(problem)
    m = form.model
    h = highs_from_model(m)
    h.changeColsIntegrality(m.num_cols, np.arange(m.num_cols, dtype=np.int32),
                            np.zeros(m.num_cols, dtype=np.uint8))
    h.setOptionValue("iis_strategy", 2)  # HiGHS 1.16's default strategy returns an empty set
    h.setOptionValue("time_limit", 30.0)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kInfeasible:
        return []
    status, iis = h.getIis()
    if status == highspy.HighsStatus.kError or not iis.valid_:
        return []
    names = m.row_names or []
    out: list[str] = []
    for i in iis.row_index_:
        text = _describe(problem, names[i] if i < len(names) else f"r{i}")
        if text not in out:
            out.append(text)
    return out


def _slot(text: str) -> Slot:
    layer, _, kind = text.rpartition("|")
    return layer, kind


def _describe(p: AllocationProblem, name: str) -> str:
    """The constraint a row of the model states, in the problem's terms."""
    m = re.fullmatch(r"(\w+)\[(.*)\]", name)
    head, arg = (m.group(1), m.group(2)) if m else (name, "")
    if head == "budget":
        parts = []
        for b in p.budgets:
            if b.resource == arg:
                unit = " of the dense model" if b.relative else ""
                if b.max is not None:
                    parts.append(f"at most {b.max:g}{unit}")
                if b.min is not None:
                    parts.append(f"at least {b.min:g}{unit}")
        return f"the budget on {arg!r} ({', '.join(parts)})"
    if head in ("count", "multiple") or head in _STRUCTURAL:
        s = _slot(arg)
        if s not in p.slots():
            return f"the row {name}"
        lo, hi, mult, zero = p.slot_count_range(s)
        what = f"between {lo} and {hi} kept"
        if mult > 1 or not zero:
            what += f", a multiple of {mult}" + ("" if zero else " other than 0")
        if s in p.slot_values:
            what += ", widths its slot values allow"
        return f"the widths allowed for {s[0]}/{s[1]} ({what}, of {p.slots()[s].size})"
    if name == "latency_cap":
        return f"the latency cap ({p.latency_cap:g})"
    if name == "importance_floor":
        return f"the importance floor ({p.importance_floor_abs():g})"
    m = re.fullmatch(r"couple(\d+)", name)
    if m:
        return _coupling(p, int(m.group(1)))
    m = re.fullmatch(r"equal(\d+)_\d+", name)
    if m:
        eq = p.equal_counts[int(m.group(1))]
        return "equal counts of " + ", ".join(f"{a}/{b}" for a, b in eq)
    return f"the row {name}"


def _coupling(p: AllocationProblem, t: int) -> str:
    """Row couple{t}: group rows first (one per member after the first), then one
    per implication, in the order ``formulate`` adds them."""
    for g in p.groups:
        if t < len(g) - 1:
            return f"the group {g[0]} = {g[t + 1]} (kept together)"
        t -= len(g) - 1
    a, b = p.implications[t]
    return f"the implication keep {a} only if {b} is kept"


def _families(problem: AllocationProblem, backend: str) -> str:
    """Which constraint families, dropped one at a time, make the problem feasible."""
    from ..solve import SolveOptions, get_backend

    families: dict[str, tuple[str, object]] = {
        "budgets": ("budgets", []),
        "count bounds": ("count_bounds", []),
        "width multiples": ("multiples", []),
        "slot values": ("slot_values", {}),
        "groups": ("groups", []),
        "implications": ("implications", []),
        "equal counts": ("equal_counts", []),
        "latency cap": ("latency_cap", None),
    }
    culprits = []
    be = get_backend(backend)
    for label, (attr, empty) in families.items():
        if not getattr(problem, attr):
            continue
        q = copy.copy(problem)
        setattr(q, attr, empty)
        q._valued = None
        q._orders = None
        try:
            q.diagnose()
        except InfeasibleProblemError:
            continue
        r = be.solve(formulate(q, integer_only=backend == "cpsat").model,
                     SolveOptions(time_limit_s=10.0, rel_gap=1e-4))
        if r.has_solution:
            culprits.append(label)
    if culprits:
        return ("No selection satisfies every constraint. Dropping any one of these families "
                "makes the problem feasible, so they conflict with the rest: "
                + ", ".join(culprits) + ".")
    return ("No selection satisfies every constraint, and no single constraint family is "
            "to blame alone: several conflict together.")
