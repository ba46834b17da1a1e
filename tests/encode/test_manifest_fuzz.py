"""Fuzz over the instance MANIFEST: every malformed document (generated from the shipped,
valid one by one mutation that breaks the schema of ``optprune.encode.manifest``) gives
one line on stderr, exit 2, no stdout and no output file, for every command that reads it."""

import contextlib
import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optprune.cli import main
from optprune.encode.manifest import validate_manifest

LIB = Path(__file__).resolve().parents[2] / "instances"
SHIPPED = json.loads((LIB / "MANIFEST.json").read_text())


def _sample(doc, per_layout=2):
    """``doc`` with its first ``per_layout`` instances of each (set, entry layout): the
    validator checks every entry on its own, so the sample has every case the whole
    document has, at a fraction of the reading and checking per run."""
    out = json.loads(json.dumps(doc))
    seen = {}
    for name in sorted(doc["instances"]):
        e = doc["instances"][name]
        layout = (e.get("set"), tuple(sorted(e)), tuple(sorted(e.get("known", {}))))
        seen.setdefault(layout, []).append(name)
    keep = {n for names in seen.values() for n in names[:per_layout]}
    out["instances"] = {n: e for n, e in doc["instances"].items() if n in keep}
    if all("known" in e for e in out["instances"].values()):
        # Every shipped instance is curated: one entry is fuzzed in the uncurated layout
        # too (an instance generated, not yet solved: no class, no known optimum, no .sol).
        name = sorted(out["instances"])[-1]
        for key in ("class", "known", "sol_sha256"):
            out["instances"][name].pop(key, None)
    return out


BASE = _sample(SHIPPED)
NAMES = sorted(BASE["instances"])
KNOWN = [n for n in NAMES if "known" in BASE["instances"][n]]  # curated: with a known optimum
NETS = sorted(BASE["sets"]["digits"]["networks"])
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
_HEX = re.compile(r"[0-9a-f]{64}")

not_object = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                       st.text(max_size=10), st.lists(st.integers(), max_size=3))
not_string = st.one_of(st.none(), st.booleans(), st.integers(), st.lists(st.text(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
not_number = st.one_of(st.text(max_size=8), st.booleans(), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bad_hex = st.one_of(not_string, st.text(max_size=70).filter(lambda t: not _HEX.fullmatch(t)),
                    st.just("A" * 64), st.just("0" * 63))
bad_name = st.one_of(
    st.sampled_from(["", ".", "..", "../x", "../outside/x", "a/b", "/abs", ".hidden", "a\\b",
                     "x" * 201, "a b", "-lead", "a\x00b", "é"]),
    st.text(min_size=1, max_size=20).filter(lambda t: not _NAME.fullmatch(t)))
bad_path = st.one_of(
    not_string,
    st.sampled_from(["", "/etc/passwd", "../x.npz", "../../x.npz", "networks/../../x.npz",
                     "networks//x.npz", "./networks/x.npz", "networks\\x.npz", "C:x.npz",
                     "networks/./x.npz", "networks/..", "/"]))


def _instance(doc, i):
    return doc["instances"][NAMES[i % len(NAMES)]]


def _network(doc, i):
    return doc["sets"]["digits"]["networks"][NETS[i % len(NETS)]]


@st.composite
def malformed(draw):
    """(bytes of the MANIFEST file, what was broken)."""
    doc = json.loads(json.dumps(BASE))
    i = draw(st.integers(0, 10_000))
    kind = draw(st.sampled_from([
        "doc", "instances", "sets", "entry", "hash", "drop_hash", "name", "network",
        "network_sha", "known", "known_field", "seed", "count", "set_file", "set_file_sha",
        "set_instances", "set_entry", "truncate", "utf8", "nan", "deep", "format"]))
    e = _instance(doc, i)
    if kind == "doc":
        doc = draw(not_object)
    elif kind == "instances":
        doc["instances"] = draw(not_object)
    elif kind == "sets":
        doc["sets"] = draw(not_object)
    elif kind == "entry":
        doc["instances"][NAMES[i % len(NAMES)]] = draw(not_object)
    elif kind == "hash":
        e[draw(st.sampled_from(["mps_sha256", "json_sha256"]))] = draw(bad_hex)
    elif kind == "drop_hash":
        del e[draw(st.sampled_from(["mps_sha256", "json_sha256"]))]
    elif kind == "name":
        doc["instances"][draw(bad_name)] = e
    elif kind == "network":
        e["network"] = draw(bad_path)
    elif kind == "network_sha":
        e["network_sha256"] = draw(bad_hex)
    elif kind == "known":
        e["known"] = draw(not_object)
    elif kind == "known_field":
        key = draw(st.sampled_from(["termination", "objective", "bound", "time_limit_s"]))
        e = doc["instances"][KNOWN[i % len(KNOWN)]]
        e["known"][key] = draw(not_string if key == "termination" else not_number)
    elif kind == "seed":
        e["seed"] = draw(st.one_of(st.floats(allow_nan=False), st.text(max_size=4),
                                   st.booleans(), st.none()))
    elif kind == "count":
        e[draw(st.sampled_from(["binaries", "columns", "rows"]))] = draw(st.one_of(
            st.integers(max_value=-1), not_number, st.floats(allow_nan=False)))
    elif kind == "set_file":
        _network(doc, i)["file"] = draw(bad_path)
    elif kind == "set_file_sha":
        _network(doc, i)["file_sha256"] = draw(bad_hex)
    elif kind == "set_instances":
        doc["sets"]["digits"]["instances"] = draw(st.one_of(
            not_object.filter(lambda v: not isinstance(v, list)), st.lists(bad_name, min_size=1)))
    elif kind == "set_entry":
        doc["sets"]["digits"]["networks"][NETS[i % len(NETS)]] = draw(not_object)
    elif kind == "format":
        doc[draw(st.sampled_from(["format", "generator"]))] = draw(not_string)
    text = json.dumps(doc, indent=1).strip()
    if kind == "truncate":
        return text[: draw(st.integers(1, len(text) - 1))].encode(), kind
    if kind == "utf8":
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80"]))
        return text[:at].encode() + junk + text[at:].encode(), kind
    if kind == "nan":
        return text.replace('"bound": ', '"bound": NaN, "x": ', 1).encode(), kind
    if kind == "deep":
        n = draw(st.one_of(st.integers(40, 200), st.just(100_000)))
        return (text[:-1] + ', "deep": ' + "[" * n + "]" * n + "}").encode(), kind
    return text.encode(), kind


def test_the_base_document_is_valid():
    validate_manifest(SHIPPED, LIB)
    validate_manifest(BASE, LIB)
    assert len(KNOWN) >= 2 and len(NAMES) > len(KNOWN)  # both entry layouts are fuzzed


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def scratch():
    d = Path(tempfile.mkdtemp(prefix="manifest-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=malformed())
def test_malformed_manifest_one_line_exit_2_no_output(scratch, case):
    raw, kind = case
    d = Path(tempfile.mkdtemp(dir=scratch))
    (d / "MANIFEST.json").write_bytes(raw)
    runs = d / "runs.jsonl"
    for argv, cmd in (
        (["instances", "verify", "--dir", str(d), "--no-solve"], "instances"),
        (["bench", str(d), "--out", str(runs), "--no-progress"], "bench"),
        (["instances", "generate", "digits", "--dir", str(d), "--from-networks", "--no-solve"],
         "instances"),
    ):
        rc, out, err = _run(argv)
        assert rc == 2, (kind, argv[0], err)
        assert out == "", (kind, out)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"optprune {cmd}: error: "), (kind, err)
    assert sorted(p.name for p in d.iterdir()) == ["MANIFEST.json"], kind  # nothing written
    assert (d / "MANIFEST.json").read_bytes() == raw
