"""Contracts of the encoder: what is returned is what is proven; threads, limits, paths
and errors as promised. Each test reproduces a failure seen from outside, then checks
the fixed behaviour."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from optprune.cli import main
from optprune.encode import AttackSpec, Region, attack, compute_bounds, encode, from_torch
from optprune.encode.attack import run_highs, solve_encoding
from optprune.encode.prune import (
    UnprovenSelectionError, UnprovenSelectionWarning, judge_selection, prune_neurons,
)
from optprune.errors import ValidationError
from optprune.solve import SolveOptions

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "instances"
NET = LIB / "networks" / "digits-2x50-dense-s0.npz"  # a shipped digits classifier


# ------------------------------------------------------- an error is not a proof
def _robust_case(digits_mlp):
    net_t, X, y = digits_mlp
    label = int(y[0])
    return net_t, X[0], label, (label + 1) % 10


def test_first_solve_with_threads_is_honored_in_a_fresh_process(digits_mlp, tmp_path):
    """The reported failure: threads=1 as the first solve of a process (after the LP
    bounds started HiGHS's scheduler with its default size) ended in termination
    'error', bound 0.0 and outcome 'robust'."""
    net_t, X, y = digits_mlp  # the fresh process reads it, so it neither trains nor imports torch
    net_file = from_torch(net_t).save(tmp_path / "net.npz")
    code = textwrap.dedent(f"""
        import json
        import optprune.encode as E
        net = E.load_network({str(net_file)!r})
        x0, label = {X[0].tolist()!r}, {int(y[0])}
        out = {{}}
        for t in (1, None, 2, 1):
            r = E.attack(net, x0, label, radius=0.05, target=(label + 1) % 10, threads=t)
            out[str(t)] = [r.outcome, r.termination, r.objective, r.bound]
        print(json.dumps(out))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, env=env, cwd=REPO)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    ref = out["None"]
    assert ref[1] == "optimal"
    for t, (outcome, term, obj, bound) in out.items():
        assert term == "optimal", (t, term)
        assert outcome == ref[0]
        assert obj == pytest.approx(ref[2], abs=1e-6) and bound == pytest.approx(ref[3], abs=1e-6)


def test_threads_changes_within_one_process(digits_mlp):
    net_t, x0, label, target = _robust_case(digits_mlp)
    res = [attack(net_t, x0, label, radius=0.05, target=target, threads=t, bounds="symbolic")
           for t in (2, 1, 2)]
    assert {r.termination for r in res} == {"optimal"}
    assert max(r.objective for r in res) - min(r.objective for r in res) < 1e-6


def test_a_solver_error_is_never_robust(digits_mlp):
    """A real HiGHS failure (a 'threads' value the running scheduler refuses, passed
    around run_highs) must give outcome 'unknown' with no bound, never 'robust'."""
    import highspy

    net_t, x0, label, target = _robust_case(digits_mlp)
    net = from_torch(net_t)
    region = Region.make(net, x0, "linf", 0.05)
    enc = encode(net, region, AttackSpec(label, target), compute_bounds(net, region, "symbolic"))
    ok = solve_encoding(enc, options=SolveOptions(threads=1))
    assert ok.termination == "optimal" and ok.outcome == "robust" and ok.bound < 0
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.addVar(0.0, 1.0)
    run_highs(h, 1)  # the scheduler now has 1 thread; asking for 2 behind its back fails
    bad = solve_encoding(enc, options=SolveOptions(extra={"threads": 2}))
    assert bad.termination == "error"
    assert bad.outcome == "unknown" and bad.bound is None and bad.objective is None
    assert "nothing is proven" in bad.message
    assert bad.to_dict()["outcome"] == "unknown"


# ------------------------------------------------- time-limited neuron selections
def test_selection_cut_off_by_its_time_limit_is_never_used_silently(digits_mlp):
    # Within 0.05 s the allocation engine may or may not reach an incumbent (its fast
    # stage depends on the machine's speed): either the selection is refused, or it is
    # used with a warning that gives its gap. Never silently.
    import warnings

    from optprune.encode.prune import digits_data, train_mlp

    data = digits_data(7)
    big = train_mlp((200, 200, 200), data[0], data[1], seed=7, epochs=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            prune_neurons(big, 0.3, "exact", time_limit_s=0.05)
        except UnprovenSelectionError as exc:
            assert "without any selection" in str(exc)
        else:
            assert any(issubclass(w.category, UnprovenSelectionWarning)
                       and "NOT proven optimal" in str(w.message) and "gap" in str(w.message)
                       for w in seen)
    with pytest.raises(UnprovenSelectionError, match="require_optimal|without any selection"):
        prune_neurons(big, 0.3, "exact", time_limit_s=0.05, require_optimal=True)


def test_unproven_selection_warns_or_is_refused():
    info = {"status": "time_limit", "objective": 10.0, "bound": 12.5, "gap": 0.25,
            "proven": False, "time_limit_s": 5.0}
    with pytest.warns(UnprovenSelectionWarning, match=r"gap 0\.25"):
        judge_selection(info, require_optimal=False)
    with pytest.raises(UnprovenSelectionError, match=r"gap 0\.25.*require_optimal"):
        judge_selection(info, require_optimal=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        judge_selection({**info, "proven": True, "status": "optimal"}, require_optimal=True)


def test_exact_selection_exposes_its_limit_and_proof(digits_mlp):
    net, _, _ = digits_mlp
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnprovenSelectionWarning)
        _, info = prune_neurons(net, 0.4, "exact", time_limit_s=120.0, require_optimal=True,
                                return_info=True)
    assert info["proven"] and info["time_limit_s"] == 120.0 and info["gap"] <= 1e-9


@pytest.mark.slow
def test_time_limited_selection_with_incumbent_warns_with_its_gap():
    """End to end: a 64-100-100-10 selection stopped by its limit after an incumbent
    was found (searching upward for such a limit on this machine)."""
    from optprune.encode.prune import digits_data, train_mlp

    data = digits_data(7)
    net = train_mlp((100, 100), data[0], data[1], seed=7, epochs=5)
    for limit in (4.0, 8.0, 16.0):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                _, info = prune_neurons(net, 0.3, "exact", time_limit_s=limit,
                                        return_info=True)
            except UnprovenSelectionError:
                continue  # no incumbent yet: a longer limit
        if info["proven"]:
            pytest.skip(f"proved optimal within {limit} s on this machine")
        msgs = [str(w.message) for w in seen if w.category is UnprovenSelectionWarning]
        assert len(msgs) == 1 and "NOT proven optimal" in msgs[0]
        assert f"{info['gap']:.3g}" in msgs[0]
        with pytest.raises(UnprovenSelectionError):
            prune_neurons(net, 0.3, "exact", time_limit_s=limit, require_optimal=True)
        return
    pytest.skip("no incumbent within 16 s on this machine")


# ----------------------------------------------------- the library stays inside
@pytest.fixture
def lib(tmp_path):
    """The library as a clean checkout has it: the sets that ship their files (the other
    sets' files, when generated here, are left out so that every run sees the same)."""
    d = tmp_path / "lib"
    (d / "networks").mkdir(parents=True)
    man = json.loads((LIB / "MANIFEST.json").read_text())
    man["sets"] = {k: v for k, v in man["sets"].items() if v.get("ship_files", True)}
    man["instances"] = {k: e for k, e in man["instances"].items() if e["set"] in man["sets"]}
    for st in man["sets"].values():
        for info in st["networks"].values():
            shutil.copy(LIB / info["file"], d / info["file"])
    for name, e in man["instances"].items():
        for suffix, key in ((".mps", "mps_sha256"), (".json", "json_sha256"),
                            (".sol", "sol_sha256")):
            if key in e:
                shutil.copy(LIB / f"{name}{suffix}", d / f"{name}{suffix}")
    (d / "MANIFEST.json").write_text(json.dumps(man, indent=2))
    return d


def _manifest(d):
    return json.loads((d / "MANIFEST.json").read_text())


def _write(d, man):
    (d / "MANIFEST.json").write_text(json.dumps(man))


def _cli(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("mutate", ["name", "network_abs", "network_up", "set_file"])
def test_paths_leaving_the_library_are_refused_before_opening(lib, tmp_path, capsys, mutate):
    from optprune.encode.bench import collect_instances
    from optprune.encode.instances import verify

    man = _manifest(lib)
    first = sorted(man["instances"])[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    for suf in (".mps", ".json"):  # a matching copy outside: it must not be opened anyway
        shutil.copy(lib / f"{first}{suf}", outside / f"x{suf}")
    if mutate == "name":
        man["instances"]["../outside/x"] = man["instances"][first]
    elif mutate == "network_abs":
        man["instances"][first]["network"] = str(REPO / "instances" / man["instances"][first]
                                                 ["network"])
    elif mutate == "network_up":
        man["instances"][first]["network"] = "../../" + man["instances"][first]["network"]
    else:
        net = next(iter(man["sets"]["digits"]["networks"].values()))
        net["file"] = "networks/../../lib/" + net["file"]
    _write(lib, man)
    for call in (lambda: verify(lib, resolve=False), lambda: collect_instances([str(lib)])):
        with pytest.raises(ValidationError, match="MANIFEST schema"):
            call()
    out = tmp_path / "runs.jsonl"
    for argv in (["instances", "verify", "--dir", str(lib), "--no-solve"],
                 ["bench", str(lib), "--out", str(out), "--no-progress"]):
        rc, o, err = _cli(argv, capsys)
        assert rc == 2 and o == "" and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_symlink_out_of_the_library_is_refused(lib, tmp_path):
    from optprune.encode.instances import verify

    man = _manifest(lib)
    first = sorted(man["instances"])[0]
    net = man["instances"][first]["network"]
    target = tmp_path / "elsewhere.npz"
    shutil.move(lib / net, target)
    os.symlink(target, lib / net)
    with pytest.raises(ValidationError, match="outside the library"):
        verify(lib, resolve=False)


def test_encode_name_cannot_leave_out(tmp_path, capsys):
    net = NET
    out = tmp_path / "a" / "b"
    for name in ("../../x", "/tmp/x", "..", ".hidden", "a/b"):
        rc, o, err = _cli(["encode", str(net), "--digits-index", "0", "--radius", "0.05",
                           "--name", name, "--out", str(out)], capsys)
        assert rc == 2 and "--name" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.rglob("*.mps"))


def test_verify_says_how_to_rebuild_the_files_a_set_does_not_ship(lib):
    from optprune.encode.instances import verify

    man = _manifest(lib)
    man["sets"]["digits"]["ship_files"] = False  # as the sets that ship networks only
    _write(lib, man)
    first = sorted(man["instances"])[0]
    (lib / f"{first}.mps").unlink()
    rep = verify(lib, resolve=False)
    assert rep.failures == [f"{first}.mps: missing (set 'digits' ships its networks only: "
                            "`optprune instances generate --all --from-networks --no-solve` "
                            "rebuilds its files)"]


def test_verify_counts_never_built_instances_apart_and_checks_their_networks(lib, capsys):
    from optprune.encode.instances import verify

    man = _manifest(lib)
    man["sets"]["digits"]["ship_files"] = False
    _write(lib, man)
    names = sorted(man["instances"])
    for suffix in (".mps", ".json", ".sol"):  # never generated: no file at all
        (lib / f"{names[0]}{suffix}").unlink(missing_ok=True)
    rep = verify(lib, resolve=False)
    assert rep.ok and rep.unbuilt == [names[0]] and rep.checked == len(names)
    rc, out, _ = _cli(["instances", "verify", "--dir", str(lib), "--no-solve"], capsys)
    assert rc == 0 and f"1 of {len(names)} instances are not built here" in out
    assert f"all {len(names) - 1} built instances verified" in out
    # Its network is still checked: a corrupt one is a failure.
    net = lib / man["instances"][names[0]]["network"]
    net.write_bytes(net.read_bytes()[:300])
    rep = verify(lib, resolve=False)
    assert not rep.ok and rep.unbuilt[0] == names[0]
    assert f"{names[0]}: network {man['instances'][names[0]]['network']}: " in "\n".join(
        rep.failures)


def test_verify_names_every_missing_or_corrupt_file(lib, capsys):
    man = _manifest(lib)
    nets = sorted((lib / "networks").glob("*.npz"))
    nets[0].unlink()                                       # a deleted network
    nets[1].write_bytes(nets[1].read_bytes()[:500])        # a truncated (corrupt) one
    names = sorted(man["instances"])
    clean = [n for n in names if man["instances"][n]["network"] not in
             (f"networks/{nets[0].name}", f"networks/{nets[1].name}")]
    (lib / f"{clean[0]}.json").unlink()                    # a missing sidecar
    p = lib / f"{clean[1]}.mps"
    p.write_bytes(p.read_bytes().replace(b"RHS", b"RHZ", 1))  # a changed model
    rc, o, err = _cli(["instances", "verify", "--dir", str(lib), "--no-solve"], capsys)
    assert rc == 1
    assert f"networks/{nets[0].name}" in err and "missing" in err
    assert f"networks/{nets[1].name}" in err
    assert f"{clean[0]}.json: missing" in err
    assert f"{clean[1]}.mps: sha256 mismatch" in err
    hit = [n for n in names if man["instances"][n]["network"] == f"networks/{nets[0].name}"]
    assert all(f"{n}: network" in err for n in hit)  # every instance of the lost network
    assert "Traceback" not in err
    # with re-solves the rest is still checked (the corrupt files do not stop it)
    from optprune.encode.instances import verify

    quickest = sorted((n for n in clean[2:] if "2x50" in n and "known" in man["instances"][n]),
                      key=lambda n: man["instances"][n]["known"]["time_s"])
    rep = verify(lib, resolve=True, time_limit_s=20.0, names=quickest[:2])
    assert len(rep.rows) == 2 and all(r["solve_ok"] for r in rep.rows)
    assert all(f.startswith("networks/") for f in rep.failures)  # the set's lost networks


# --------------------------------------------------------- one line, exit 2
def _bad_onnx(tmp_path):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    W = numpy_helper.from_array(np.ones((3, 4), dtype=np.float32), "W")
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [W])
    raw = helper.make_model(g).SerializeToString()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(raw[: len(raw) // 2])
    q = tmp_path / "garbage.onnx"
    q.write_bytes(b"\x08\x07not a protobuf at all" * 3)
    return [p, q]


def test_cli_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    net = NET
    enc = ["--digits-index", "0", "--radius", "0.05", "--out", str(tmp_path / "o")]
    no_arrays = tmp_path / "other.npz"
    np.savez(no_arrays, weights=np.zeros(3))
    bad_zip = tmp_path / "bad.npz"
    bad_zip.write_bytes(net.read_bytes()[:300])
    a_file = tmp_path / "file"
    a_file.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    cases = [
        [str(net), *enc, "--input-shape", "1,x,8"],
        [str(net), *enc, "--input-shape", "0,8,8"],
        [str(net), *enc, "--domain", "0,one"],
        [str(no_arrays), *enc],
        [str(bad_zip), *enc],
        *[[str(p), *enc] for p in _bad_onnx(tmp_path)],
        [str(net), "--digits-index", "0", "--radius", "0.05", "--out", str(a_file)],
        [str(net), "--digits-index", "0", "--radius", "0.05", "--out", str(a_file / "sub")],
        [str(net), *enc, "--solve", "--backend", "no-such-solver"],
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append([str(net), "--digits-index", "0", "--radius", "0.05", "--out", str(ro)])
    for argv in cases:
        rc, o, err = _cli(["encode", *argv], capsys)
        assert rc == 2, argv
        assert err.startswith("optprune encode: error: ") and len(err.strip().splitlines()) == 1, err
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "MANIFEST.json").write_text('{"instances": {"a": ')
    out = tmp_path / "runs.jsonl"
    rc, o, err = _cli(["bench", str(lib), "--out", str(out), "--no-progress"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and not out.exists()
    mps = LIB / "digits-2x50-dense-s0-i0-linf.mps"
    for bad_out in (str(a_file / "runs.jsonl"), str(tmp_path)):
        rc, o, err = _cli(["bench", str(mps), "--out", bad_out, "--no-progress"], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
    rc, o, err = _cli(["instances", "generate", "digits-mini", "--dir", str(a_file)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1


def _children(pid):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the workers")
def test_kill_9_of_bench_ends_its_workers(tmp_path):
    hard = [str(LIB / f"digits-2x100-dense-s0-i{i}-l1.mps") for i in (0, 1)]
    exe = [sys.executable, "-c", "import sys; from optprune.cli import main; sys.exit(main())"]
    p = subprocess.Popen([*exe, "bench", *hard, "--workers", "2", "--time-limit", "120",
                          "--out", str(tmp_path / "r.jsonl"), "--no-progress"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        workers = []
        deadline = time.time() + 120
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = [c for c in _children(p.pid)
                       if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2, "the bench did not start its 2 workers"
        time.sleep(3.0)  # the workers are inside their solves now
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        left = [w for w in workers if _alive(w)]
        for w in left:
            os.kill(w, signal.SIGKILL)
        assert not left, "bench workers outlived their parent"
    finally:
        if p.poll() is None:
            p.kill()
