"""What code an output request may carry: a notebook or a Python script, named inside the home."""

from __future__ import annotations

import json

import pytest

from disclosure.rerun.code import MAX_CODE_BYTES, CodeRefused, check_code

NOTEBOOK = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}).encode()


def test_a_notebook_in_a_folder_of_the_home_is_accepted_with_its_extract_version() -> None:
    code = check_code("analysis/table1.ipynb", NOTEBOOK, "ab" * 32)

    assert (code.path, code.kind, code.extract_version) == ("analysis/table1.ipynb", "notebook", "ab" * 32)


def test_a_python_script_is_accepted_without_an_extract_version() -> None:
    code = check_code("make_tables.py", b"print('hello')\n", None)

    assert code.kind == "script" and code.extract_version is None


@pytest.mark.parametrize(
    ("path", "content", "version", "message"),
    [
        ("../../etc/passwd.py", b"x", None, "relative to the workspace home"),
        ("/home/u/a.ipynb", NOTEBOOK, None, "relative to the workspace home"),
        ("analysis.R", b"x <- 1", None, "must be a notebook"),
        ("a.ipynb", b"not json", None, "not valid JSON"),
        ("a.ipynb", json.dumps({"nbformat": 3, "worksheets": []}).encode(), None, "format 4"),
        ("a.py", b"", None, "empty"),
        ("a.py", b"\xff\xfe", None, "UTF-8"),
        ("a.py", b"x" * (MAX_CODE_BYTES + 1), None, "4 MB at most"),
        ("a.py", b"x", "not-a-digest", "64-character digest"),
    ],
)
def test_code_that_cannot_be_re_run_is_refused_with_the_reason(path, content, version, message) -> None:
    with pytest.raises(CodeRefused, match=message):
        check_code(path, content, version)
