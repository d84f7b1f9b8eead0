"""Changes between two versions of a text (tre/web/textdiff.py)."""

from __future__ import annotations

from tre.web.textdiff import Change, changed, changes


def test_changed_words_are_removed_then_added_and_the_rest_kept() -> None:
    parts = changes("Use the data only inside the environment.", "Use the data only inside the secure environment.")

    assert [p for p in parts if p.kind != "same"] == [Change("added", "secure ")]
    assert "".join(p.text for p in parts if p.kind != "removed") == "Use the data only inside the secure environment."


def test_both_texts_can_be_rebuilt_from_the_changes() -> None:
    old = "Line one.\nPublish nothing small.\nKeep it safe."
    new = "Line one.\nPublish no count below ten.\nKeep it safe.\nReport breaches."

    parts = changes(old, new)

    assert "".join(p.text for p in parts if p.kind != "added") == old
    assert "".join(p.text for p in parts if p.kind != "removed") == new
    assert changed(parts) and not changed(changes(old, old))
