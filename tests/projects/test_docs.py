"""The lifecycle diagram in docs/projects.md is generated from the transition table and kept fresh."""

from __future__ import annotations

from projects import docs, rules


def test_docs_diagram_matches_the_transition_table() -> None:
    text = docs.DOC.read_text(encoding="utf-8")

    assert docs.current_block(text) == docs.generated_block(), "run: .venv/bin/python -m projects.docs"


def test_generated_block_contains_every_transition() -> None:
    block = docs.generated_block()

    for (frm, to), step in rules.TRANSITIONS.items():
        assert f"{frm} --> {to}: {step}" in block
