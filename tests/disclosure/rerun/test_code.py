"""What code an output request may carry: a notebook (Python or R kernel), a Python or an R script, named
inside the home; a notebook's cell outputs are dropped on arrival and never shown."""

from __future__ import annotations

import json

import pytest

from disclosure.rerun.code import MAX_CODE_BYTES, CodeRefused, check_code, code_cells

NOTEBOOK = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}).encode()


def test_a_notebook_in_a_folder_of_the_home_is_accepted_with_its_extract_version() -> None:
    code = check_code("analysis/table1.ipynb", NOTEBOOK, "ab" * 32)

    assert (code.path, code.kind, code.extract_version) == ("analysis/table1.ipynb", "notebook", "ab" * 32)


def test_a_python_script_is_accepted_without_an_extract_version() -> None:
    code = check_code("make_tables.py", b"print('hello')\n", None)

    assert code.kind == "script" and code.extract_version is None


def test_an_r_script_and_an_r_notebook_are_accepted_as_r() -> None:
    r_notebook = json.dumps({"nbformat": 4, "metadata": {"kernelspec": {"name": "ir"}}, "cells": []}).encode()

    assert check_code("tables/by_sex.R", b"x <- 1\n", None).language == "r"
    assert check_code("a.ipynb", r_notebook, None).language == "r"
    assert check_code("a.ipynb", NOTEBOOK, None).language == "python"


def test_a_notebook_arrives_without_its_cell_outputs_attachments_or_widget_state() -> None:
    leaky = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3"}, "widgets": {"state": "NHS 9434765919"}},
        "cells": [
            {
                "cell_type": "code",
                "id": "a",
                "metadata": {"scrolled": True},
                "execution_count": 3,
                "source": "frame.head()",
                "outputs": [{"output_type": "execute_result", "data": {"text/plain": "9434765919  F  1961-02-03"}}],
            },
            {"cell_type": "markdown", "id": "b", "metadata": {}, "source": "![x](attachment:p.png)",
             "attachments": {"p.png": {"image/png": "c2NyZWVuc2hvdA=="}}},
        ],
    }

    code = check_code("a.ipynb", json.dumps(leaky).encode(), None)

    kept = json.loads(code.content)
    assert "9434765919" not in code.content.decode() and "c2NyZWVuc2hvdA" not in code.content.decode()
    assert [c["source"] for c in kept["cells"]] == ["frame.head()", "![x](attachment:p.png)"]
    assert kept["cells"][0]["outputs"] == [] and kept["cells"][0]["execution_count"] is None
    assert kept["metadata"] == {"kernelspec": {"name": "python3"}}


def test_code_cells_are_text_and_never_outputs_even_of_code_stored_with_them() -> None:
    stored = json.dumps(
        {
            "nbformat": 4,
            "cells": [
                {"cell_type": "code", "source": ["x = 1\n", "x"], "outputs": [{"text": "9434765919"}]},
                {"cell_type": "markdown", "source": "<script>alert(1)</script>"},
            ],
        }
    ).encode()

    cells = code_cells("notebook", stored)

    assert cells == [
        {"number": 1, "type": "code", "source": "x = 1\nx"},
        {"number": 2, "type": "markdown", "source": "<script>alert(1)</script>"},
    ]
    assert code_cells("script", b"print(1)\n") == [{"number": 1, "type": "code", "source": "print(1)\n"}]


@pytest.mark.parametrize(
    ("path", "content", "version", "message"),
    [
        ("../../etc/passwd.py", b"x", None, "relative to the workspace home"),
        ("/home/u/a.ipynb", NOTEBOOK, None, "relative to the workspace home"),
        ("analysis.do", b"x", None, "must be a notebook"),
        ("a.ipynb", json.dumps({"nbformat": 4, "metadata": {"kernelspec": {"name": "julia"}}, "cells": []}).encode(),
         None, "Python 3 or R"),
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
