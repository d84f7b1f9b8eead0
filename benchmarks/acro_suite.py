"""Run ACRO 1.0.2's own public-API tests against ``disclosure.compat`` (or against ACRO itself).

    python -m benchmarks.acro_suite            # against disclosure.compat; prints "passed/collected"
    python -m benchmarks.acro_suite --acro     # the same modules against ACRO 1.0.2 in .venv-acro

The tests are not part of this repository. At run time the ``acro==1.0.2`` source distribution is
downloaded with pip (cached under ``.cache/acro/``, which git ignores), five test modules are taken from
its ``test/`` folder, their ``acro`` imports are rewritten to ``disclosure.compat`` (nothing else is
changed) and pytest runs them in a temporary folder. The sdist does not ship the two Stata files the
tests read nor the conftest with the ``data``/``acro``/``cleanup_path`` fixtures: the data are taken from
``$ACRO_TEST_DATA`` (default ``/work/shared/data/acro``) and checked against their sha256, and the
fixtures are written here (ACRO's suite builds ``ACRO(suppress=True)`` and reads ``data/test_data.dta``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "acro"
VERSION = "1.0.2"
SDIST = f"acro-{VERSION}.tar.gz"
MODULES = (
    "test_tables.py",
    "test_tables_syntheticdata.py",
    "test_session_management.py",
    "test_plots.py",
    "test_regressions.py",
)
# The five modules define 149 test functions; pytest's parametrisation makes 172 tests of them
# (test_tables 56 -> 67, test_tables_syntheticdata 29 -> 36, test_regressions 12 -> 17; the other two have
# none). ACRO 1.0.2 passes all 172 here. The issue counted 169 (ACRO passing 167), which no selection of these
# modules in the sdist reproduces; a different count now means the selection or the sdist changed.
EXPECTED_TESTS = 172
DATA_FILES = {
    "test_data.dta": "ab72622df74eae4cf151f647294af76b95ec194bdc350bbcf6e6e244f532cd8c",
    "nursery_dataset.dta": "6d524c3d664f9abbf9f77d71521b36906920b53ed1c3937725747f5842d80735",
}
# ACRO's module -> ours. Only import statements are rewritten.
MODULE_MAP = {
    "acro": "disclosure.compat",
    "acro.record": "disclosure.compat.records",
    "acro.version": "disclosure.compat",
    "acro.acro_tables": "disclosure.compat.tables",
    "acro.acro_stata_parser": "disclosure.compat.stata",
    "acro.utils": "disclosure.compat.utils",
}

CONFTEST = '''"""Fixtures ACRO's suite expects (its conftest is not in the sdist); from benchmarks/acro_suite.py."""
import os
import shutil

import pandas as pd
import pytest

from {module} import ACRO

_FOLDERS = ("RES_PYTEST", "outputs", "acro_artifacts")


def _clear():
    for folder in _FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def cleanup_path():
    _clear()
    yield
    _clear()


@pytest.fixture
def data():
    return pd.read_stata(os.path.join("data", "test_data.dta"))


@pytest.fixture
def acro():
    return ACRO(suppress=True)


@pytest.fixture
def acro_federated():
    return ACRO(federated=True)
'''


# test_custom_output reads notebooks/XandY.jpeg from ACRO's repository, which the sdist does not ship. The
# test only needs some JPEG there, so the harness writes this stand-in (an 8x8 grey image drawn for it).
STAND_IN_JPEG = (
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1x"
    "eXBkeFxlZ2P/wAALCAAIAAgBAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQR"
    "BRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4"
    "eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEB"
    "AAA/AOkr/9k="
)


class Unavailable(RuntimeError):
    """The sdist or the test data cannot be had on this machine."""


def fetch_sdist() -> Path:
    """The cached sdist, downloaded with pip on first use."""
    target = CACHE / SDIST
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        done = subprocess.run([*cmd, f"acro=={VERSION}", "-d", tmp], capture_output=True, text=True, timeout=600)
        got = Path(tmp) / SDIST
        if done.returncode != 0 or not got.exists():
            raise Unavailable(f"pip could not download acro=={VERSION}: {done.stderr.strip()[-300:]}")
        shutil.move(str(got), target)
    return target


def data_folder() -> Path:
    folder = Path(os.environ.get("ACRO_TEST_DATA", "/work/shared/data/acro"))
    for name, digest in DATA_FILES.items():
        path = folder / name
        if not path.exists():
            raise Unavailable(f"{path} is missing (set ACRO_TEST_DATA to ACRO's data/ folder)")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise Unavailable(f"{path} is not the file ACRO's tests read (sha256 differs)")
    return folder


def rewrite_imports(source: str, module_map: dict[str, str]) -> str:
    """Point ``from acro[.x] import ...`` and ``import acro[.x]`` at our modules; leave all else alone."""

    def repl(match: re.Match) -> str:
        keyword, module = match.group(1), match.group(2)
        if module not in module_map:
            raise Unavailable(f"no counterpart for ACRO module {module!r}")
        return f"{keyword} {module_map[module]}"

    return re.sub(r"^(\s*from|\s*import)\s+(acro(?:\.\w+)?)\b", repl, source, flags=re.MULTILINE)


def prepare(workdir: Path, against_acro: bool) -> Path:
    sdist = fetch_sdist()
    data = data_folder()
    tests = workdir / "test"
    tests.mkdir(parents=True)
    with tarfile.open(sdist) as tar:
        for name in MODULES:
            member = tar.extractfile(f"acro-{VERSION}/test/{name}")
            if member is None:
                raise Unavailable(f"{name} is not in {SDIST}")
            text = member.read().decode("utf-8")
            (tests / name).write_text(text if against_acro else rewrite_imports(text, MODULE_MAP), encoding="utf-8")
    (tests / "conftest.py").write_text(
        CONFTEST.format(module="acro" if against_acro else MODULE_MAP["acro"]), encoding="utf-8"
    )
    (workdir / "data").mkdir()
    for name in DATA_FILES:
        shutil.copyfile(data / name, workdir / "data" / name)
    (workdir / "notebooks").mkdir()
    (workdir / "notebooks" / "XandY.jpeg").write_bytes(base64.b64decode(STAND_IN_JPEG))
    return tests


def run(against_acro: bool = False, extra: list[str] | None = None, verbose: bool = False) -> dict:
    """Run the five modules; returns counts and the ids of tests that did not pass."""
    python = str(ROOT / ".venv-acro" / "bin" / "python") if against_acro else sys.executable
    with tempfile.TemporaryDirectory(prefix="acro-suite-") as tmp:
        workdir = Path(tmp)
        prepare(workdir, against_acro)
        env = dict(os.environ, MPLBACKEND="Agg")
        site = _test_site(python, against_acro)
        env["PYTHONPATH"] = site if against_acro else os.pathsep.join([str(ROOT), site])
        report = workdir / "report.xml"
        cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "test"]
        cmd += [
            "-o",
            "addopts=",
            "-o",
            "filterwarnings=",
            "--continue-on-collection-errors",
            f"--junitxml={report}",
            *(extra or []),
        ]
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=not verbose, text=True, timeout=1800)
        if not report.exists():
            raise RuntimeError(f"pytest did not run: {(done.stdout or '')[-2000:]}{(done.stderr or '')[-2000:]}")
        return _counts(report)


# What ACRO's tests import beyond the project's own dependencies, as a researcher's workspace has them:
# tabulate (test_tables), matplotlib (charts are written as PNG when it is there) and openpyxl (xlsx).
# Installed once under .cache/ with --no-deps so nothing of the project's environment is shadowed.
TEST_EXTRAS = (
    "tabulate",
    "matplotlib",
    "contourpy",
    "cycler",
    "fonttools",
    "kiwisolver",
    "pillow",
    "openpyxl",
    "et-xmlfile",
)


def _test_site(python: str, against_acro: bool) -> str:
    site = CACHE / ("site-acro" if against_acro else "site")
    wanted = ("pytest", "pluggy", "iniconfig", "pygments", "tabulate") if against_acro else TEST_EXTRAS
    marker = site / ".complete"
    if not marker.exists() or marker.read_text(encoding="utf-8") != "\n".join(wanted):
        cmd = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), *wanted]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise Unavailable(f"could not install the suite's test extras: {done.stderr.strip()[-300:]}")
        marker.write_text("\n".join(wanted), encoding="utf-8")
    return str(site)


def _counts(report: Path) -> dict:
    failed = []
    total = passed = 0
    for case in ET.parse(report).getroot().iter("testcase"):
        total += 1
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        if bad:
            failed.append(f"{case.get('classname')}::{case.get('name')} ({bad[0].tag})")
        else:
            passed += 1
    return {"passed": passed, "total": total, "not_passed": failed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acro", action="store_true", help="run against ACRO 1.0.2 in .venv-acro instead")
    parser.add_argument("--list", action="store_true", help="list the tests that did not pass")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    try:
        counts = run(args.acro, args.pytest_args, args.verbose)
    except Unavailable as exc:
        print(f"ACRO SUITE UNAVAILABLE: {exc}")
        return 2
    if args.list:
        for name in counts["not_passed"]:
            print("  not passed:", name)
    target = "ACRO 1.0.2" if args.acro else "disclosure.compat"
    print(f"{counts['passed']}/{counts['total']} passed against {target}")
    if counts["total"] != EXPECTED_TESTS:
        print(f"WARNING: {counts['total']} tests collected where ACRO {VERSION}'s five modules hold {EXPECTED_TESTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
