"""Instance files, the MANIFEST, the CLI and the bench runner."""

import json
import math

import numpy as np
import pytest

from optprune.cli import main
from optprune.encode.bench import (
    collect_instances, plot_profile, read_records, run_bench, shifted_geomean, summarize,
)
from optprune.encode.instances import InstanceSet, generate, read_instance, verify
from optprune.errors import BackendUnavailableError, ValidationError

SMALL = InstanceSet("t", archs=((8, 8),), images=(0, 3), attacks=(("linf", 0.05), ("l1", 1.0)),
                    epochs=4, finetune_epochs=2, solve_time_limit_s=10.0)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    d = tmp_path_factory.mktemp("lib")
    man = generate(SMALL, d)
    return d, man


def test_generate_is_deterministic(library, tmp_path):
    d, man = library
    assert len(man["instances"]) == 8  # 2 variants x 2 images x 2 norms
    again = generate(SMALL, tmp_path, solve_known=False)
    for name, e in man["instances"].items():
        assert again["instances"][name]["mps_sha256"] == e["mps_sha256"]
        assert again["instances"][name]["json_sha256"] == e["json_sha256"]
        assert e["known"]["termination"] == "optimal"
    side = json.loads((d / f"{name}.json").read_text())["metadata"]
    for key in ("network_sha256", "x0", "label", "target", "norm", "radius", "objective",
                "bounds_method", "variables", "binaries", "generator"):
        assert key in side


def test_verify_passes_then_catches_corruption(library, tmp_path):
    d, man = library
    rep = verify(d)
    assert rep.ok and rep.checked == 8 and all(r["solve_ok"] for r in rep.rows)
    # a corrupted copy of the library
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    name = sorted(man["instances"])[0]
    p = bad / f"{name}.mps"
    p.write_bytes(p.read_bytes().replace(b"RHS", b"RHZ", 1))
    rep = verify(bad, resolve=False)
    assert not rep.ok and any(name in f for f in rep.failures)
    with pytest.raises(ValidationError, match="sha256"):
        read_instance(p, man["instances"][name]["mps_sha256"])
    # a sidecar from another instance: counts do not match
    other = sorted(man["instances"], key=lambda n: man["instances"][n]["columns"])
    small, big = other[0], other[-1]
    if man["instances"][small]["columns"] != man["instances"][big]["columns"]:
        shutil.copy(bad / f"{big}.json", bad / f"{small}.json")
        with pytest.raises(ValidationError, match="do not belong together"):
            read_instance(bad / f"{small}.mps")


def test_cli_encode_solve_and_verify(library, tmp_path, capsys):
    d, man = library
    net = next(iter(man["sets"]["t"]["networks"].values()))["file"]
    out = tmp_path / "enc"
    rc = main(["encode", str(d / net), "--digits-index", "3", "--norm", "l1", "--radius", "3",
               "--out", str(out), "--name", "one", "--solve", "--time-limit", "20", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert (out / "one.mps").exists() and (out / "one.json").exists()
    r = res["result"]
    if r["outcome"] == "adversarial":
        from optprune.encode import load_network

        x = np.asarray(r["witness"])
        meta = json.loads((out / "one.json").read_text())["metadata"]
        assert int(np.argmax(load_network(d / net).forward(x))) != meta["label"]
    assert main(["instances", "verify", "--dir", str(d), "--no-solve"]) == 0
    assert main(["encode", str(d / net), "--digits-index", "3", "--radius", "-1",
                 "--out", str(out)]) == 2
    assert "radius" in capsys.readouterr().err
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(b"not really a pickle")
    assert main(["encode", str(pkl), "--digits-index", "0", "--radius", "0.1"]) == 2
    assert "allow_pickle" in capsys.readouterr().err


def test_shifted_geomean_formula():
    assert shifted_geomean([3.0, 3.0, 3.0], 1.0) == pytest.approx(3.0)
    v = [0.5, 2.0, 40.0]
    assert shifted_geomean(v, 10.0) == pytest.approx(
        math.exp(sum(math.log(x + 10) for x in v) / 3) - 10)
    assert shifted_geomean([1, 100], 0.0) == pytest.approx(10.0)


def test_bench_resumes_after_kill(library, tmp_path):
    d, man = library
    inst = collect_instances([str(d)])[:3]
    out = tmp_path / "runs.jsonl"
    recs = run_bench(inst, ["highs"], [0, 1], 10.0, out, progress=False)
    assert len(recs) == 6 and all(r["solved"] for r in recs)
    lines = out.read_text().splitlines()
    # a kill after 2 records, in the middle of writing the third line
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    kept = read_records(out)
    assert len(kept) == 2
    recs2 = run_bench(inst, ["highs"], [0, 1], 10.0, out, workers=2, progress=False)
    keys = [(r["instance"], r["backend"], r["seed"]) for r in recs2]
    assert len(keys) == 6 == len(set(keys))
    assert recs2[:2] == kept  # finished runs are not run again
    again = run_bench(inst, ["highs"], [0, 1], 10.0, out, progress=False)
    assert again == recs2  # nothing left to run
    rows = summarize(recs2, ["backend"])
    assert rows[0]["solved"] == 6 and rows[0]["runs"] == 6
    png = plot_profile(recs2, tmp_path / "p.png")
    assert png.stat().st_size > 1000


def test_bench_records_limits_and_errors(tmp_path, library):
    d, man = library
    mps = d / f"{sorted(man['instances'])[0]}.mps"
    bad = tmp_path / "broken.mps"
    bad.write_text("this is not an MPS file\n")
    recs = run_bench([(str(mps), "0" * 64), (str(bad), None)], ["highs"], [0], 5.0,
                     tmp_path / "r.jsonl", progress=False)
    assert {r["termination"] for r in recs} == {"error"}  # hash mismatch and unreadable
    assert all("error" in r for r in recs)
    with pytest.raises(BackendUnavailableError, match="no-such-solver"):
        run_bench([(str(mps), None)], ["no-such-solver"], [0], 5.0, tmp_path / "x.jsonl")


@pytest.mark.slow
def test_bench_on_dask_local_cluster(library, tmp_path):
    pytest.importorskip("distributed")
    d, man = library
    inst = collect_instances([str(d)])[:2]
    recs = run_bench(inst, ["highs"], [0], 10.0, tmp_path / "dask.jsonl", workers=2,
                     scheduler="local", progress=False)
    assert len(recs) == 2 and all(r["solved"] for r in recs)
    for r in recs:
        known = man["instances"][r["instance"]]["known"]["objective"]
        assert abs(r["objective"] - known) <= 1e-4 * max(1.0, abs(known))


def test_generate_from_networks_reproduces_files_and_checks_hashes(library, tmp_path):
    import shutil

    d, man = library
    copy = tmp_path / "lib"
    shutil.copytree(d, copy)
    again = generate(SMALL, copy, solve_known=False, from_networks=True)
    for name, e in man["instances"].items():
        assert again["instances"][name]["mps_sha256"] == e["mps_sha256"]
        assert again["instances"][name]["json_sha256"] == e["json_sha256"]
        assert again["instances"][name]["known"] == e["known"]  # kept: same model
    net = next((copy / "networks").glob("*.npz"))
    net.write_bytes(net.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ValidationError, match="sha256"):
        generate(SMALL, copy, solve_known=False, from_networks=True)
    with pytest.raises(ValidationError, match="from-networks"):
        generate(SMALL, tmp_path / "empty", solve_known=False, from_networks=True)


def _read_sol(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("=obj= ")
    return float(lines[0].split()[1]), {a: float(b) for a, b in (ln.split() for ln in lines[1:])}


def test_curate_classifies_confirms_and_writes_miplib_files(library, tmp_path):
    import shutil

    from optprune.encode.library import curate, hardness_table

    d, _ = library
    lib = tmp_path / "lib"
    shutil.copytree(d, lib)
    man = curate(lib, confirm_limit_s=60.0)
    solu = (lib / "library.solu").read_text().splitlines()
    assert len(solu) == len(man["instances"])
    for name, e in man["instances"].items():
        assert e["class"] in ("easy", "medium")  # tiny nets: HiGHS proves them at once
        k = e["known"]
        assert k["termination"] == "optimal" and f"=opt= {name} {k['objective']!r}" in solu
        assert k["confirmed_by"]["solver"] == "scip" and k["confirmed_by"]["agrees"]
        # the .sol point: the lift of the best input, feasible, objective = =obj=
        model = read_instance(lib / f"{name}.mps")
        obj, vals = _read_sol(lib / f"{name}.sol")
        x = np.zeros(model.num_cols)
        for j, nm in enumerate(model.col_names):
            x[j] = vals.get(nm, 0.0)
        assert model.max_violation(x) <= 1e-9
        assert model.objective_value(x) == pytest.approx(obj, abs=1e-12)
        assert obj == pytest.approx(k["objective"], abs=1e-6)
    assert "| all | | 8 |" in hardness_table(man)
    # the .sol files are rebuilt byte for byte from the networks and the MANIFEST
    again = tmp_path / "again"
    shutil.copytree(lib, again)
    for f in again.glob("*.sol"):
        f.unlink()
    generate(SMALL, again, solve_known=False, from_networks=True)
    for f in lib.glob("*.sol"):
        assert (again / f.name).read_bytes() == f.read_bytes()
    assert verify(again, resolve=False).ok
