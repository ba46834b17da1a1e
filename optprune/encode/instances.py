"""Instance files and the instance library.

One instance is ``NAME.mps`` (written by HiGHS, readable by any MIP solver) plus
``NAME.json`` (the LinearModel sidecar whose ``metadata`` holds the network hash, x0,
label, target, norm, radius, objective kind, bounds method, variable and binary counts
and the generator version). Nothing time-dependent goes into either file, so a
regenerated instance has the same bytes and the same sha256.

``MANIFEST.json`` in the library directory lists every instance with the sha256 of both
files, the generator, set and seed, the network file, and the known objective and bound
with the solver, its version and the time that proved them. ``verify`` checks every
hash and re-solves; ``generate`` rebuilds a named set deterministically (seeded data
split, seeded training, pruning, fine-tuning, bounds, encoding).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


import numpy as np

from ..errors import OptpruneError, ValidationError
from ..solve import LinearModel, SolveOptions, solve
from ..solve.model import write_json_atomic
from . import manifest as _manifest
from .manifest import MANIFEST, check_name, library_path, read_json

__all__ = ["SETS", "LIBRARY_SETS", "InstanceSet", "write_instance", "write_model",
           "write_solution", "read_instance", "generate", "verify", "sha256_file",
           "load_manifest"]

GENERATOR = "optprune.encode.instances/3"
# what curation (``library.curate``) adds to an entry; kept while the model is unchanged
CURATED = ("known", "class")


KINDS = ("mlp", "cnn", "surrogate")


@dataclass(frozen=True)
class InstanceSet:
    """A named, deterministic family of instances.

    kind: ``mlp`` (digits MLPs of hidden widths ``archs``), ``cnn`` (digits CNNs of
    channels ``archs``, ``prune.train_cnn``, encoded as sparse affine layers) or
    ``surrogate`` (diabetes regression MLPs optimized over, ``surrogate.py``).
    Adversarial kinds: every test image of ``images`` with every (norm, radius) of
    ``attacks``; surrogate: every test patient of ``patients`` with every budget of
    ``budgets``. ``keep_fractions``: pruned variants besides the dense one (neurons per
    layer, or channels per convolution; fine-tuned). ``ship_files``: whether the .mps /
    .json files are kept in the repository (else rebuilt by ``generate --from-networks``).
    """

    name: str
    archs: tuple[tuple[int, ...], ...]
    seeds: tuple[int, ...] = (0,)
    images: tuple[int, ...] = (0, 1)        # indices into the seeded test split
    attacks: tuple[tuple[str, float], ...] = (("linf", 0.05), ("l1", 1.0))
    keep_fractions: tuple[float, ...] = (0.5,)  # pruned variants besides the dense one
    objective: str = "margin"
    bounds: str = "lp"
    epochs: int = 60
    finetune_epochs: int = 20
    group_lasso: float = 1e-4
    solve_time_limit_s: float = 20.0
    description: str = ""
    kind: str = "mlp"
    patients: tuple[int, ...] = ()
    budgets: tuple[float, ...] = ()
    lr: float = 3e-3
    ship_files: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


SETS: dict[str, InstanceSet] = {
    "digits-mini": InstanceSet(
        "digits-mini", archs=((16, 16),), images=(0, 1),
        attacks=(("linf", 0.05), ("l1", 1.0)), solve_time_limit_s=10.0,
        description="tiny: for tests and a first look"),
    "digits": InstanceSet(
        "digits", archs=((50, 50), (100, 100)), images=(0, 1),
        attacks=(("linf", 0.05), ("l1", 1.5)), solve_time_limit_s=20.0, ship_files=True,
        description="digits MLPs dense and pruned (keep 50%, fine-tuned), 2 test images, "
                    "L-inf and L1 margin attacks (files shipped)"),
    "digits-mlp": InstanceSet(
        "digits-mlp", archs=((50, 50, 50), (200, 200), (100, 100, 100, 100)), seeds=(1,),
        images=(0, 1, 2), attacks=(("linf", 0.05), ("l1", 1.0)), keep_fractions=(0.3, 0.5),
        bounds="symbolic", solve_time_limit_s=60.0,
        description="digits MLPs of 3 depths / widths, dense and pruned to 30% / 50% of the "
                    "neurons per layer (fine-tuned), 3 test images, L-inf 0.05 and L1 1.0"),
    "digits-cnn": InstanceSet(
        "digits-cnn", archs=((8, 8),), seeds=(2,), kind="cnn", images=(0, 1, 2),
        attacks=(("linf", 0.05), ("l1", 0.5)), keep_fractions=(0.5,), epochs=40,
        bounds="symbolic", solve_time_limit_s=60.0,
        description="a digits CNN (conv 3x3 to 8 channels, stride 1; conv 3x3 to 8, stride "
                    "2; linear), dense and with half its channels pruned (fine-tuned), as "
                    "sparse affine layers; 3 test images, L-inf 0.05 and L1 0.5"),
    "digits-hard": InstanceSet(
        "digits-hard", archs=((300, 300), (200, 200, 200)), seeds=(11,), images=(0, 1, 2),
        attacks=(("linf", 0.05),), keep_fractions=(), bounds="symbolic", group_lasso=0.0,
        objective="margin_runner_up", solve_time_limit_s=120.0,
        description="64-300-300-10 and 64-200-200-200-10, L-inf 0.05, margin against the "
                    "clean image's runner-up class (benchmarks/bench_solve_hard.py)"),
    "diabetes": InstanceSet(
        "diabetes", archs=((64, 64),), seeds=(0,), kind="surrogate", images=(), attacks=(),
        patients=(0, 1, 2, 3, 4, 5), budgets=(1.0, 2.0), keep_fractions=(0.3, 0.5),
        epochs=60, finetune_epochs=30, group_lasso=0.03, lr=1e-3, bounds="symbolic",
        objective="max_prediction", solve_time_limit_s=60.0,
        description="surrogate optimization: a diabetes progression MLP (10-64-64-1) dense "
                    "and pruned to 30% / 50%, max prediction within an L1 budget of change "
                    "(1 or 2 standard deviations) around 6 test patients"),
}
LIBRARY_SETS = ("digits", "digits-mlp", "digits-cnn", "digits-hard", "diabetes")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_model(model: LinearModel, directory: str | os.PathLike, name: str,
                stats: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``directory/NAME.mps`` and ``directory/NAME.json`` (the sidecar's metadata:
    the model's own, the generator, ``stats``' neuron counts and ``extra``)."""
    from . import GENERATOR_VERSION

    check_name(name)
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError(f"The output directory {str(directory)!r} cannot be created "
                              f"({exc.strerror or exc}).") from exc
    model.name = name
    st = stats or {}
    meta: dict[str, Any] = {"generator": GENERATOR_VERSION}
    meta.update({k: st[k] for k in ("stable_neurons", "unstable_neurons", "per_layer")
                 if k in st})
    meta.update(extra or {})
    model.metadata.update(meta)
    mps = model.write(directory / f"{name}.mps")
    return mps, mps.with_suffix(".json")


def write_instance(enc: Any, directory: str | os.PathLike, name: str,
                   extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``directory/NAME.mps`` and ``directory/NAME.json`` for an Encoding."""
    st = enc.stats()
    return write_model(enc.model, directory, name, {
        "stable_neurons": st["stable"], "unstable_neurons": st["unstable"],
        "per_layer": st["per_layer"]}, extra)


def write_solution(path: str | os.PathLike, model: LinearModel, x: np.ndarray) -> Path:
    """A MIPLIB solution file: ``=obj= VALUE`` and one ``NAME VALUE`` line per nonzero
    column (names from the model; ``C<j>`` where it has none)."""
    path = Path(path)
    names = model.col_names or [f"C{j}" for j in range(model.num_cols)]
    lines = [f"=obj= {model.objective_value(x)!r}"]
    lines += [f"{names[j]} {float(x[j])!r}" for j in np.flatnonzero(x)]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def read_instance(path: str | os.PathLike, expect_sha256: str | None = None) -> LinearModel:
    """Read ``NAME.mps`` (+ ``NAME.json``); check its hash first when one is given, and
    that the sidecar's counts match the model (a mismatched pair is refused)."""
    path = Path(path)
    if not path.exists():
        raise ValidationError(f"The instance file {str(path)!r} does not exist.")
    if expect_sha256 is not None:
        got = sha256_file(path)
        if got != expect_sha256:
            raise ValidationError(
                f"The instance file {path.name!r} has sha256 {got[:12]}..., but the manifest "
                f"expects {expect_sha256[:12]}...: the file is corrupt or was changed. "
                "Regenerate it with `optprune instances generate SET`."
            )
    side = path.with_suffix(".json")
    info = read_json(side, "The instance sidecar") if side.exists() else {}
    if not isinstance(info, dict):
        raise ValidationError(f"The sidecar {side.name!r} is not a JSON object; regenerate "
                              "the instance.")
    model = LinearModel.read(path)
    for key, val in (("columns", model.num_cols), ("rows", model.num_rows),
                     ("integer_columns", model.num_integer)):
        if key in info and info[key] != val:
            raise ValidationError(
                f"The sidecar {side.name!r} says {key}={info[key]!r} but {path.name!r} has "
                f"{val}: the two files do not belong together. Regenerate the instance."
            )
    return model


def load_manifest(directory: str | os.PathLike, missing_ok: bool = True) -> dict[str, Any]:
    """The library's MANIFEST, checked against its schema (``manifest.py``) before any
    file it names is opened."""
    return _manifest.load_manifest(directory, GENERATOR, missing_ok)


def _arch_name(arch: tuple[int, ...]) -> str:
    return f"{len(arch)}x{arch[0]}" if len(set(arch)) == 1 else "-".join(map(str, arch))


def _known(model: LinearModel, time_limit_s: float) -> dict[str, Any]:
    res = solve(model, "highs", SolveOptions(time_limit_s=time_limit_s, rel_gap=1e-6))
    f = lambda v: None if v is None or not math.isfinite(v) else float(v)  # noqa: E731
    return {"objective": f(res.objective), "bound": f(res.bound), "gap": f(res.gap),
            "termination": res.termination.value, "solver": "highs",
            "solver_version": res.backend_version, "time_s": round(res.solve_time_s, 4),
            "time_limit_s": time_limit_s}


def _variant_names(spec: InstanceSet) -> list[str]:
    return ["dense"] + [f"pruned{int(round(kf * 100))}" for kf in spec.keep_fractions]


def _set_data(spec: InstanceSet, seed: int) -> tuple:
    if spec.kind == "surrogate":
        from .surrogate import diabetes_data

        return diabetes_data(seed)
    from .prune import digits_data

    return digits_data(seed)


def _trained_variants(spec: InstanceSet, arch: Any, seed: int, data: tuple) -> list:
    """(variant, Network, metrics) for the dense net and each pruned one, trained here."""
    from .network import from_torch
    from .prune import (
        CNN_INPUT_SHAPE, accuracy, finetune, prune_and_finetune, prune_channels, prune_neurons,
        train_cnn, train_mlp,
    )

    Xtr, ytr, Xte, yte = data[:4]
    if spec.kind == "surrogate":
        from .surrogate import r2_score

        dense_t = train_mlp(arch, Xtr, ytr, seed=seed, epochs=spec.epochs, lr=spec.lr,
                            group_lasso=spec.group_lasso, regression=True)
        out = [("dense", from_torch(dense_t), {"test_r2": r2_score(dense_t, Xte, yte)})]
        for kf in spec.keep_fractions:
            small = finetune(prune_neurons(dense_t, kf), Xtr, ytr, spec.finetune_epochs,
                             seed=seed, regression=True)
            out.append((f"pruned{int(round(kf * 100))}", from_torch(small),
                        {"test_r2": r2_score(small, Xte, yte)}))
        return out
    if spec.kind == "cnn":
        dense_t = train_cnn(arch, Xtr, ytr, seed=seed, epochs=spec.epochs)
        out = [("dense", from_torch(dense_t, CNN_INPUT_SHAPE),
                {"test_accuracy": accuracy(dense_t, Xte, yte)})]
        for kf in spec.keep_fractions:
            small = finetune(prune_channels(dense_t, kf), Xtr, ytr, spec.finetune_epochs,
                             seed=seed)
            out.append((f"pruned{int(round(kf * 100))}", from_torch(small, CNN_INPUT_SHAPE),
                        {"test_accuracy": accuracy(small, Xte, yte)}))
        return out
    dense_t = train_mlp(arch, Xtr, ytr, seed=seed, epochs=spec.epochs,
                        group_lasso=spec.group_lasso)
    out = [("dense", from_torch(dense_t), {"test_accuracy": accuracy(dense_t, Xte, yte)})]
    for kf in spec.keep_fractions:
        pruned_t, rep = prune_and_finetune(dense_t, kf, data, seed=seed,
                                           finetune_epochs=spec.finetune_epochs)
        out.append((f"pruned{int(round(kf * 100))}", from_torch(pruned_t),
                    {"test_accuracy": rep.test_accuracy_after}))
    return out


_METRICS = ("test_accuracy", "test_r2")


def _stored_variants(spec: InstanceSet, set_name: str, arch: Any, seed: int,
                     directory: Path, manifest: dict) -> list:
    """The networks the MANIFEST lists for (arch, seed), each checked against its hash."""
    from .network import load_network

    known = manifest.get("sets", {}).get(set_name, {}).get("networks", {})
    out = []
    for vname in _variant_names(spec):
        net_id = f"{set_name}-{_arch_name(arch)}-{vname}-s{seed}"
        info = known.get(net_id)
        path = (library_path(directory, info["file"], f"The file of network {net_id!r}")
                if info is not None else None)
        if info is None or path is None or not path.exists():
            raise ValidationError(
                f"Network {net_id!r} is not in {directory / MANIFEST} (or its file is "
                "missing): generate the set with training first (without --from-networks).")
        if sha256_file(path) != info["file_sha256"]:
            raise ValidationError(f"{path} does not match its sha256 in the MANIFEST "
                                  "(corrupt or modified file).")
        # the hash ties the file to the recorded training run and its test metrics
        out.append((vname, load_network(path), {k: info[k] for k in _METRICS if k in info}))
    return out


def _built_instances(spec: InstanceSet, net_id: str, net: Any, data: tuple) -> Any:
    """(name, model, stats, lift, metadata, source) of every instance of one network;
    ``lift(x)`` is the MIP point of an input x (``heuristics.lift``); ``source`` the
    Encoding (adversarial) or NetworkBlock (surrogate)."""
    from .bounds import compute_bounds
    from .formulate import AttackSpec, Region, encode
    from .heuristics import lift

    if spec.kind == "surrogate":
        from .surrogate import budget_lift, budget_problem

        Xtr, Xte, names = data[0], data[2], data[4]
        lo, hi = Xtr.min(0), Xtr.max(0)
        for pat in spec.patients:
            for B in spec.budgets:
                name = f"{net_id}-p{pat}-b{B:g}"
                model, blk = budget_problem(net, names, lo, hi, Xte[pat], B, name=name,
                                            bounds=spec.bounds)
                yield (name, model, {"binaries": model.num_integer, **blk.stats},
                       lambda x, m=model, bk=blk: budget_lift(m, bk, x),
                       {"patient_index": pat}, blk)
        return
    Xte, yte = data[2], data[3]
    for img in spec.images:
        x0, label = Xte[img], int(yte[img])
        target = None
        if spec.objective == "margin_runner_up":
            target = int([c for c in np.argsort(-net.forward(x0)) if c != label][0])
        for norm, radius in spec.attacks:
            name = f"{net_id}-i{img}-{norm}"
            region = Region.make(net, x0, norm, radius)
            b = compute_bounds(net, region, spec.bounds)
            enc = encode(net, region, AttackSpec(label, target, "margin"), b, name=name)
            st = enc.stats()
            yield (name, enc.model, {**st, "stable_neurons": st["stable"],
                                     "unstable_neurons": st["unstable"]},
                   lambda x, e=enc: lift(e, x), {"image_index": img}, enc)


def generate(set_name: "str | InstanceSet", directory: str | os.PathLike = "instances", *,
             solve_known: bool = True, time_limit_s: float | None = None,
             from_networks: bool = False,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Regenerate the set ``set_name`` (a name in SETS or an InstanceSet) into
    ``directory`` and update its MANIFEST.

    Training is seeded and single-threaded, so on one machine the same command gives the
    same networks and files bit for bit. Float32 training is not bit-portable across
    CPUs (torch and MKL pick kernels by instruction set, and summation order changes
    the last bits), so on another machine the retrained networks, and therefore the
    files, may differ; the networks of the shipped library are stored in
    ``networks/`` with their hashes, and ``from_networks=True`` rebuilds every instance
    from them (no training): bounds, model and files are then reproduced exactly.
    A retrained network whose hash differs from the one the MANIFEST records is
    reported through ``progress``.
    """
    if isinstance(set_name, InstanceSet):
        spec, set_name = set_name, set_name.name
    elif set_name in SETS:
        spec = SETS[set_name]
    else:
        raise ValidationError(
            f"Unknown instance set {set_name!r}; expected one of {sorted(SETS)}."
        )
    check_name(set_name, "The instance set name")
    directory = Path(directory)
    manifest = load_manifest(directory)
    try:
        (directory / "networks").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError(f"The library directory {str(directory)!r} cannot be written "
                              f"({exc.strerror or exc}).") from exc
    limit = spec.solve_time_limit_s if time_limit_s is None else time_limit_s
    say = progress or (lambda s: None)
    names: list[str] = []
    nets_info: dict[str, Any] = {}
    for seed in spec.seeds:
        data = _set_data(spec, seed)
        for arch in spec.archs:
            if from_networks:
                variants = _stored_variants(spec, set_name, arch, seed, directory, manifest)
            else:
                variants = _trained_variants(spec, arch, seed, data)
            for vname, net, metrics in variants:
                net_id = f"{set_name}-{_arch_name(arch)}-{vname}-s{seed}"
                before = manifest.get("sets", {}).get(set_name, {}).get("networks", {}).get(
                    net_id, {}).get("network_sha256")
                if before is not None and before != net.sha256():
                    say(f"note: {net_id} trained here differs from the network the MANIFEST "
                        "recorded (float training is not bit-portable across CPUs); use "
                        "--from-networks to rebuild the shipped instances exactly")
                net_path = directory / "networks" / f"{net_id}.npz"
                if not from_networks:
                    net.save(net_path)
                nets_info[net_id] = {"file": f"networks/{net_id}.npz",
                                     "file_sha256": sha256_file(net_path),
                                     "network_sha256": net.sha256(),
                                     "hidden": net.hidden_sizes, **metrics, "seed": seed}
                for name, model, stats, lift_x, meta, _ in _built_instances(spec, net_id, net,
                                                                             data):
                    mps, js = write_model(model, directory, name, stats, {
                        "set": set_name, "seed": seed, **meta,
                        "network_file": f"networks/{net_id}.npz", "network_variant": vname})
                    entry = {
                        "set": set_name, "seed": seed, "generator": GENERATOR,
                        "kind": "surrogate" if spec.kind == "surrogate" else "adversarial",
                        "network": f"networks/{net_id}.npz",
                        "network_sha256": net.sha256(),
                        "mps_sha256": sha256_file(mps), "json_sha256": sha256_file(js),
                        "binaries": model.num_integer, "columns": model.num_cols,
                        "rows": model.num_rows, "nonzeros": int(model.A.nnz),
                    }
                    prev = manifest["instances"].get(name, {})
                    if solve_known:
                        entry["known"] = _known(model, limit)
                    elif prev.get("mps_sha256") == entry["mps_sha256"]:
                        for key in CURATED:  # the same model: what was proven still holds
                            if key in prev:
                                entry[key] = prev[key]
                    best = entry.get("known", {}).get("best_input")
                    if best is not None:
                        sol = write_solution(directory / f"{name}.sol", model,
                                             lift_x(np.asarray(best, dtype=np.float64)))
                        entry["sol_sha256"] = sha256_file(sol)
                    manifest["instances"][name] = dict(sorted(entry.items()))  # stable bytes
                    names.append(name)
                    k = entry.get("known", {})
                    say(f"{name}: {model.num_integer} binaries, "
                        f"{k.get('termination', '-')} obj={k.get('objective')} "
                        f"in {k.get('time_s', '-')} s")
    manifest["sets"][set_name] = {**spec.to_dict(), "instances": names, "networks": nets_info}
    manifest["generator"] = GENERATOR
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


@dataclass
class VerifyReport:
    """``unbuilt``: instances of sets that ship their networks only whose files were
    never generated (none of them present): not failures, ``instances generate
    --from-networks`` builds them."""

    checked: int = 0
    failures: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    unbuilt: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _file_problem(path: Path, sha256: str) -> str | None:
    """"missing", "sha256 mismatch ..." or "unreadable ..." for a library file, or None."""
    if not path.is_file():
        return "missing"
    try:
        got = sha256_file(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if got != sha256:
        return f"sha256 mismatch (has {got[:12]}..., the MANIFEST expects {sha256[:12]}...)"
    return None


def _network_problem(directory: Path, rel: str, network_sha256: str | None,
                     cache: dict[str, str | None]) -> str | None:
    """Why the network file ``rel`` is missing, corrupt or not the recorded network
    (``cache``: file -> its network hash, None if missing, "corrupt: ..." if unreadable)."""
    from .network import load_network

    if rel not in cache:
        path = library_path(directory, rel, "A network path")
        if not path.is_file():
            cache[rel] = None
        else:
            try:
                cache[rel] = load_network(path).sha256()
            except OptpruneError as exc:
                cache[rel] = f"corrupt: {exc}"
    got = cache[rel]
    if got is None:
        return "missing"
    if got.startswith("corrupt:"):
        return got
    if network_sha256 is not None and got != network_sha256:
        return "network sha256 mismatch (the weights are not the recorded network's)"
    return None


@dataclass
class _Checks:
    """What ``verify`` has found so far: the report, each network file's hash (or why it
    has none; ``_network_problem``'s cache) and the network files whose full problem the
    report already names (an instance then points to it)."""

    directory: Path
    rep: VerifyReport = field(default_factory=VerifyReport)
    nets: dict[str, str | None] = field(default_factory=dict)
    said: set[str] = field(default_factory=set)

    def set_networks(self, sets: dict[str, Any]) -> None:
        """The network file of every set: present, its file hash and its weights' hash."""
        for set_name, st in sorted(sets.items()):
            for net_id, info in sorted(st.get("networks", {}).items()):
                prob = _file_problem(library_path(self.directory, info["file"], "A network path"),
                                     info["file_sha256"])
                if prob is None:
                    prob = _network_problem(self.directory, info["file"],
                                            info.get("network_sha256"), self.nets)
                if prob is not None:
                    self.said.add(info["file"])
                    self.rep.failures.append(f"{info['file']} (network {net_id} of set "
                                             f"{set_name}): {prob}")

    def instance_files(self, name: str, e: dict[str, Any], shipped: bool) -> bool:
        """The instance's .mps / .json / .sol against their hashes; True if all agree."""
        ok = True
        for suffix, key in ((".mps", "mps_sha256"), (".json", "json_sha256"),
                            (".sol", "sol_sha256")):
            if key not in e:
                continue
            prob = _file_problem(self.directory / f"{name}{suffix}", e[key])
            if prob == "missing" and not shipped:
                prob = (f"missing (set {e.get('set')!r} ships its networks only: `optprune "
                        "instances generate --all --from-networks --no-solve` rebuilds its "
                        "files)")
            if prob is not None:
                ok = False
                self.rep.failures.append(f"{name}{suffix}: {prob}")
        return ok

    def instance_network(self, name: str, e: dict[str, Any]) -> bool:
        """The instance's network file against its recorded hash; True if it agrees."""
        if "network" not in e:
            return True
        prob = _network_problem(self.directory, e["network"], e["network_sha256"], self.nets)
        if prob is None:
            return True
        if prob.startswith("corrupt:") and e["network"] in self.said:
            prob = "corrupt (see above)"
        self.said.add(e["network"])
        self.rep.failures.append(f"{name}: network {e['network']}: {prob}")
        return False


def _manifest_to_verify(directory: Path, names: list[str] | None) -> dict[str, Any]:
    """The MANIFEST (schema-checked), which must list instances, all of ``names`` among them."""
    man = load_manifest(directory, missing_ok=False)
    if not man["instances"]:
        raise ValidationError(f"No instances listed in {directory / MANIFEST}; generate a set first.")
    unknown = sorted(set(names or []) - set(man["instances"]))
    if unknown:
        raise ValidationError(f"{len(unknown)} instance name(s) are not in the MANIFEST: "
                              f"{', '.join(map(repr, unknown[:5]))}. "
                              "`optprune instances verify` without names checks them all.")
    return man


def verify(directory: str | os.PathLike = "instances", *, resolve: bool = True,
           time_limit_s: float | None = None, names: list[str] | None = None,
           progress: Callable[[str], None] | None = None) -> VerifyReport:
    """Check every file the MANIFEST names and (``resolve``) re-solve each instance.

    The MANIFEST is checked against its schema first (every path inside the library);
    then every problem is reported, not the first: each missing, unreadable, corrupt or
    changed file (instance .mps / .json, network .npz of an instance or of a set) is
    named in ``failures``. An instance of a set that ships its networks only, none of
    whose files exist, is not built here (``unbuilt``): its network is checked, it is
    not a failure. A re-solve agrees when, for a known optimum, the objective
    matches within 1e-6 (relative); for a known time-limited run, the new objective and
    bound are consistent with the known ones (neither side crosses the other's proven
    bound).
    """
    directory = Path(directory)
    man = _manifest_to_verify(directory, names)
    checks = _Checks(directory)
    rep = checks.rep
    say = progress or (lambda s: None)
    checks.set_networks(man.get("sets", {}))
    for name, e in sorted(man["instances"].items()):
        if names and name not in names:
            continue
        rep.checked += 1
        row: dict[str, Any] = {"name": name, "hash_ok": True, "solve_ok": None}
        shipped = man.get("sets", {}).get(e.get("set"), {}).get("ship_files", True)
        if not shipped and not any((directory / f"{name}{suffix}").exists()
                                   for suffix in (".mps", ".json", ".sol")):
            rep.unbuilt.append(name)  # never generated here: its network is checked
            row.update(built=False, hash_ok=checks.instance_network(name, e))
            rep.rows.append(row)
            say(f"{name}: not built, network {'ok' if row['hash_ok'] else 'BAD'}")
            continue
        files_ok = checks.instance_files(name, e, shipped)
        row["hash_ok"] = checks.instance_network(name, e) and files_ok
        if resolve and row["hash_ok"] and "known" in e:
            _resolve_one(directory, name, e, time_limit_s, row, rep)
        rep.rows.append(row)
        say(f"{name}: hash {'ok' if row['hash_ok'] else 'BAD'}"
            + ("" if row["solve_ok"] is None else f", solve {'ok' if row['solve_ok'] else 'BAD'}"))
    return rep


def _resolve_one(directory: Path, name: str, e: dict[str, Any], time_limit_s: float | None,
                 row: dict[str, Any], rep: VerifyReport) -> None:
    """Re-solve one instance and compare with what the MANIFEST knows."""
    try:
        model = read_instance(directory / f"{name}.mps", e["mps_sha256"])
    except OptpruneError as exc:
        row["solve_ok"] = False
        rep.failures.append(f"{name}.mps: cannot be read ({exc})")
        return
    known = e["known"]
    t = time_limit_s if time_limit_s is not None else (known.get("time_limit_s") or 60.0)
    t0 = time.perf_counter()
    res = solve(model, "highs", SolveOptions(time_limit_s=t, rel_gap=1e-6))
    row.update(objective=res.objective, bound=res.bound, termination=res.termination.value,
               time_s=time.perf_counter() - t0)
    row["solve_ok"] = _consistent(model.sense, known, res)
    if not row["solve_ok"]:
        rep.failures.append(
            f"{name}: re-solve gives objective {res.objective} / bound {res.bound} "
            f"({res.termination.value}); the manifest knows objective "
            f"{known.get('objective')} / bound {known.get('bound')} "
            f"({known.get('termination')})")


def _consistent(sense: str, known: dict[str, Any], res: Any) -> bool:
    kt = known.get("termination")
    if res.termination.value == "error":
        return False
    if kt == "infeasible" or res.termination.value == "infeasible":
        return kt == res.termination.value or res.termination.value == "time_limit"
    tol = lambda v: 1e-6 * max(1.0, abs(v))  # noqa: E731
    ko, kb = known.get("objective"), known.get("bound")
    if (kt == "optimal" and res.termination.value == "optimal" and ko is not None
            and res.objective is not None):
        return abs(res.objective - ko) <= tol(ko) + 1e-4 * abs(ko)
    sgn = 1.0 if sense == "max" else -1.0  # compare as a maximization
    ok = True
    if res.objective is not None and kb is not None:
        ok &= sgn * res.objective <= sgn * kb + tol(kb)
    if res.bound is not None and ko is not None:
        ok &= sgn * res.bound >= sgn * ko - tol(ko)
    return bool(ok)
