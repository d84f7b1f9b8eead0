"""The workspace's contents manager serves the researcher's work to the browser but not the extract.

``jupyter.workspace_guard`` needs ``jupyter_server``, which only the workspace runtime has, so each
case runs a short script under the runtime's Python against this checkout's code (the repository comes
first on its path). The real server and browser do the same in tests/e2e/test_workspace_journey.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.jupyter.realhub import RUNTIME, RUNTIME_READY

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not RUNTIME_READY, reason=f"WORKSPACE RUNTIME NOT BUILT at {RUNTIME}: run make workspace-runtime"
)

# Asks the guarded manager for each path and prints {path: status} (200, or the refusal's HTTP status).
SCRIPT = """
import asyncio, json, sys
sys.path.insert(0, {repo!r})
from tornado import web
from jupyter.workspace_guard import GuardedContentsManager

manager = GuardedContentsManager(root_dir={home!r})

async def status(action, *args, **kwargs):
    try:
        await getattr(manager, action)(*args, **kwargs)
        return 200
    except web.HTTPError as error:
        return error.status_code

async def main():
    asks = {asks}
    answers = {{}}
    for label, (action, args, kwargs) in asks.items():
        answers[label] = await status(action, *args, **kwargs)
    print(json.dumps(answers))

asyncio.run(main())
"""


def ask(home: Path, asks: dict[str, tuple[str, list[object], dict[str, object]]], env: dict[str, str]) -> dict:
    script = SCRIPT.format(repo=str(REPO), home=str(home), asks=repr(asks))
    done = subprocess.run(
        [str(RUNTIME / "bin" / "python"), "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    extract = tmp_path / "store" / "extract"
    (extract / "patients").mkdir(parents=True)
    (extract / "patients" / "part-0.parquet").write_bytes(b"PAR1\x00\x01\x02rows\xff\xfePAR1")
    (extract / "notes.txt").write_text("row-level text\n")
    home = tmp_path / "home"
    (home / "outputs").mkdir(parents=True)
    (home / "extract").symlink_to(extract)
    return home


def test_the_extract_is_refused_by_any_path_that_leads_to_it(home: Path) -> None:
    (home / "peek.parquet").symlink_to(home / "extract" / "patients" / "part-0.parquet")
    (home / "outputs" / "notes-link.txt").symlink_to(home / "extract" / "notes.txt")
    extract_dir = str((home / "extract").resolve())

    answers = ask(
        home,
        {
            "extract file": ("get", ["extract/notes.txt"], {}),
            "extract file as text": ("get", ["extract/notes.txt"], {"type": "file", "format": "text"}),
            "symlink in home": ("get", ["peek.parquet"], {}),
            "symlink in outputs": ("get", ["outputs/notes-link.txt"], {}),
            "copy of the extract folder": ("copy", ["extract", "outputs"], {}),
            "copy of an extract file": ("copy", ["extract/notes.txt", "outputs"], {}),
        },
        {"TRE_EXTRACT_DIR": extract_dir},
    )

    assert answers == dict.fromkeys(answers, 403)
    assert not any((home / "outputs").glob("extract*")) and not (home / "outputs" / "notes.txt").exists()


def test_binary_files_are_refused_but_images_text_and_listings_are_viewable(home: Path) -> None:
    (home / "outputs" / "copy.parquet").write_bytes((home / "extract" / "patients" / "part-0.parquet").read_bytes())
    (home / "outputs" / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff")
    (home / "outputs" / "table1.csv").write_text("band,n\n1,15\n")

    answers = ask(
        home,
        {
            "binary copy": ("get", ["outputs/copy.parquet"], {}),
            "binary copy as base64": ("get", ["outputs/copy.parquet"], {"type": "file", "format": "base64"}),
            "plot": ("get", ["outputs/figure.png"], {"type": "file", "format": "base64"}),
            "table": ("get", ["outputs/table1.csv"], {}),
            "listing": ("get", ["outputs"], {}),
            "extract listing": ("get", ["extract"], {}),
            "metadata only": ("get", ["outputs/copy.parquet"], {"content": False}),
        },
        {},
    )

    assert answers == {
        "binary copy": 403,
        "binary copy as base64": 403,
        "plot": 200,
        "table": 200,
        "listing": 200,
        "extract listing": 200,
        "metadata only": 200,
    }


def test_files_larger_than_the_viewing_limit_are_refused(home: Path) -> None:
    (home / "outputs" / "big.csv").write_text("n\n" + "1\n" * (1024 * 1024 + 1))

    answers = ask(home, {"big": ("get", ["outputs/big.csv"], {})}, {})

    assert answers == {"big": 403}
