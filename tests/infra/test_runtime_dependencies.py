"""Every package the service imports at run time is declared as a runtime dependency in
pyproject.toml (or in the optional extra that the feature needs), so a machine installed without
the dev extra still starts; issue 18 found joserfc imported by tre/web/sso.py but only in dev."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("tre", "projects", "disclosure", "pseudonymisation")
OWN = {"tre", "projects", "disclosure", "pseudonymisation", "jupyter"}
# Imported only beside a declared package that brings it: module -> that package.
COMES_WITH = {"botocore": "boto3"}
# Runs in the workspaces' own Python (make workspace-runtime), never in the control plane.
# The compat modules import matplotlib (in the workspace image), openpyxl and tabulate only when present.
WORKSPACE_ONLY = {
    "disclosure/session.py",
    "disclosure/compat/plots.py",
    "disclosure/compat/workbook.py",
    "disclosure/compat/utils.py",
}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[;\s]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _imported_modules() -> dict[str, set[str]]:
    """Top-level module -> the files importing it, anywhere in the file (functions too)."""
    found: dict[str, set[str]] = {}
    for package in RUNTIME_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts or str(path.relative_to(ROOT)) in WORKSPACE_ONLY:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    found.setdefault(module.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_runtime_import_is_a_declared_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items() if name != "dev"}
    allowed = runtime | set().union(*extras.values())
    distributions = packages_distributions()

    undeclared = {}
    for module, files in _imported_modules().items():
        if module in OWN or module in sys.stdlib_module_names or module == "__future__":
            continue
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        dists |= {COMES_WITH[module]} if module in COMES_WITH else set()
        if not dists & allowed:
            undeclared[module] = sorted(files)[:3]

    assert undeclared == {}, f"imported at run time but not declared as a runtime dependency: {undeclared}"


def test_lock_pins_every_declared_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = (ROOT / "requirements.lock").read_text()
    pin = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==", re.M)
    pinned = {m.group(1).lower().replace("_", "-") for m in pin.finditer(lock)}
    declared = _names(project["dependencies"]) | _names(project["optional-dependencies"]["dev"])

    assert declared - pinned == set(), "pyproject.toml changed: run `make lock`"
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 2)[-1])
    assert all("--hash=sha256:" in b for b in blocks if "==" in b)
