"""Checks that preheat's distributions run from installed wheels, not from the source tree.

Two uses, both by `nox -s dist`:

- a script, run after installing one distribution and the preheat wheels it
  depends on, before anything else:

      python tests/dist/installed.py --dist preheat-vllm --plugins vllm

  fails unless every preheat distribution installed in this environment is a
  regular (non-editable) install whose modules live in this environment's
  site-packages, and `preheat plugins --json` lists exactly the built-in
  plugins plus `--plugins`, none of them with an error;

- a pytest plugin (`pytest -p installed`, with this folder on PYTHONPATH): an
  autouse session fixture that fails the run when any `preheat*` module the
  tests imported came from anywhere but site-packages.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig

BUILTIN_PLUGINS = ("hf", "local", "local-executor")


def site_packages() -> str:
    return os.path.realpath(sysconfig.get_paths()["purelib"])


def outside_site_packages(modules) -> list[str]:
    """`name (path)` of every module in `modules` not loaded from site-packages."""
    root = site_packages() + os.sep
    bad = []
    for name, module in sorted(modules):
        path = getattr(module, "__file__", None)
        if path is None or not os.path.realpath(path).startswith(root):
            bad.append(f"{name} ({path or 'namespace package: no file'})")
    return bad


def preheat_modules() -> list[tuple[str, object]]:
    return [
        (name, module)
        for name, module in list(sys.modules.items())
        if name.split(".")[0].startswith("preheat") and module is not None
    ]


def preheat_distributions() -> dict[str, importlib.metadata.Distribution]:
    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name == "preheat" or name.startswith("preheat-"):
            found[name] = dist
    return found


def check(dist: str, plugins: list[str]) -> None:
    problems = []
    dists = preheat_distributions()
    if dist not in dists:
        problems.append(f"{dist} is not installed")
    for name, found in sorted(dists.items()):
        direct = json.loads(found.read_text("direct_url.json") or "{}")
        if "dir_info" in direct:  # editable, or built from a directory at install time
            problems.append(
                f"{name} is installed from a directory ({direct.get('url')}), not a wheel"
            )
        packages = (found.read_text("top_level.txt") or "").split() or sorted(
            {f.parts[0] for f in found.files or () if f.suffix == ".py" and len(f.parts) > 1}
        )
        for package in packages:
            importlib.import_module(package)
    problems += [
        f"{m} is not in {site_packages()}" for m in outside_site_packages(preheat_modules())
    ]

    preheat = os.path.join(os.path.dirname(sys.executable), "preheat")
    proc = subprocess.run(
        [preheat, "plugins", "--json"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PREHEAT_DISABLE_PLUGINS"},
    )
    if proc.returncode != 0:
        problems.append(f"`preheat plugins --json` failed: {proc.stderr.strip()}")
    else:
        listed = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
        wanted = sorted({*BUILTIN_PLUGINS, *plugins})
        if sorted(listed) != wanted:
            problems.append(f"`preheat plugins` lists {sorted(listed)}, expected {wanted}")
        for name, info in sorted(listed.items()):
            if info["error"]:
                problems.append(f"plugin {name} failed to load: {info['error']}")
    if problems:
        sys.exit(
            "installed distributions are not what the wheels hold:\n  " + "\n  ".join(problems)
        )
    print(
        f"{dist}: {', '.join(sorted(dists))} installed from wheels in {site_packages()}; "
        f"plugins: {', '.join(sorted({*BUILTIN_PLUGINS, *plugins}))}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", required=True, help="the distribution under test")
    parser.add_argument("--plugins", nargs="*", default=[], help="entry-point plugins it adds")
    args = parser.parse_args(argv)
    check(args.dist.lower(), args.plugins)


# ----------------------------------------------------------------------------- pytest plugin

try:
    import pytest
except ImportError:  # the script runs before pytest is installed
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session", autouse=True)
    def _preheat_from_site_packages():
        """Fail the session when a `preheat*` module was imported from outside site-packages."""
        bad = outside_site_packages(preheat_modules())
        assert not bad, f"imported from the source tree, not the installed wheels: {bad}"
        yield
        bad = outside_site_packages(preheat_modules())
        assert not bad, f"imported from the source tree, not the installed wheels: {bad}"


if __name__ == "__main__":
    main()
