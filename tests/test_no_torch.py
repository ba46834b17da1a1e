"""``pip install optprune`` (no torch extra) gives the solver side: import optprune,
optprune.alloc, optprune.solve, ``optprune --help`` and ``optprune allocate`` work with
torch, scikit-learn, matplotlib and tqdm unimportable, and a torch command names the
extra to install."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BLOCK = ("torch", "sklearn", "matplotlib", "tqdm", "transformers", "peft")
PRELUDE = ("import sys\n"
           f"for m in {BLOCK!r}:\n"
           "    sys.modules[m] = None  # import m -> ModuleNotFoundError\n")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True,
                          text=True, timeout=300)


def test_solver_side_imports_and_solves_without_torch():
    r = _run("import optprune, optprune.alloc, optprune.solve, optprune.experiments.jsonio\n"
             "import numpy as np\n"
             "p = optprune.AllocationProblem(ids=None, layer=['a'] * 4, kind=['head'] * 4,\n"
             "    score=np.arange(4.0), costs={'params': np.ones(4)})\n"
             "p.add_budget('params', max=2)\n"
             "r = optprune.allocate(p)\n"
             "print(r.kept_ids, r.solve.termination.value)\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['a:head:2', 'a:head:3'] optimal"


def test_the_solver_side_does_not_load_torch_where_it_is_installed():
    code = ("import sys, optprune, optprune.alloc, optprune.solve, optprune.cli\n"
            "optprune.cli.build_parser()\n"
            f"print(sorted(k for k in sys.modules if k.split('.')[0] in {BLOCK!r}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_cli_help_and_allocate_without_torch(tmp_path):
    r = _run("from optprune.cli import main\n"
             "try:\n"
             "    main(['--help'])\n"
             "except SystemExit as e:\n"
             "    assert e.code == 0, e.code\n")
    assert r.returncode == 0, r.stderr
    assert "allocate" in r.stdout and "demo" in r.stdout
    import numpy as np

    from optprune import AllocationProblem

    prob = tmp_path / "p.json"
    p = AllocationProblem(ids=None, layer=["a"] * 3 + ["b"] * 3, kind=["head"] * 6,
                          score=np.array([3.0, 1, 2, 5, 4, 0]), costs={"params": np.ones(6)})
    p.add_budget("params", max=3).write_json(prob)
    out = tmp_path / "res.json"
    r = _run("from optprune.cli import main\n"
             f"sys.exit(main(['allocate', {str(prob)!r}, '--json', '--out', {str(out)!r}]))\n")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["termination"] == "optimal" and res["objective"] == 12.0
    assert sorted(res["kept_ids"]) == ["a:head:0", "b:head:0", "b:head:1"]
    assert json.loads(r.stdout)["objective"] == 12.0


@pytest.mark.parametrize("argv", [["demo", "--tiny"], ["bmrs", "--epochs", "1"],
                                  ["systolic", "sasp", "--array", "4x4", "--prune-rate", "0.1"]])
def test_a_torch_command_names_the_extra(argv):
    r = _run(f"from optprune.cli import main\nsys.exit(main({argv!r}))\n")
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    assert err[0].startswith(f"optprune {argv[0]}: error: ")
    assert "optprune[torch]" in err[0]


def test_missing_extra_error_type():
    r = _run("import optprune, optprune.nn\n"
             "from optprune._extras import require\n"
             "from optprune.errors import MissingExtraError\n"
             "for get in (lambda: require('torch'), lambda: optprune.prune,\n"
             "            lambda: optprune.nn.discover):\n"
             "    try:\n"
             "        get()\n"
             "    except MissingExtraError as e:\n"
             "        assert isinstance(e, ImportError)\n"
             "        print(e)\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    assert all("pip install" in m and "'optprune[torch]'" in m for m in lines)
