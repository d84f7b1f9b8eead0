"""The output request's transition table, tested whole, its generated diagram, and the file rules."""

from __future__ import annotations

import itertools

import pytest

from disclosure import rules
from disclosure.rules import (
    APPROVED,
    AWAITING_REVIEW,
    CHECKING,
    DRAFT,
    RELEASED,
    RETURNED,
    REVOKED,
    STATES,
    SUBMITTED,
    TERMINAL_STATES,
    WITHDRAWN,
    IllegalTransition,
    RuleViolation,
)

EXPECTED = {
    (DRAFT, SUBMITTED),
    (SUBMITTED, CHECKING),
    (CHECKING, AWAITING_REVIEW),
    (AWAITING_REVIEW, APPROVED),
    (AWAITING_REVIEW, RETURNED),
    (AWAITING_REVIEW, "rejected"),
    (RETURNED, SUBMITTED),
    (APPROVED, RELEASED),
    (RELEASED, REVOKED),
    (DRAFT, WITHDRAWN),
    (SUBMITTED, WITHDRAWN),
    (CHECKING, WITHDRAWN),
    (AWAITING_REVIEW, WITHDRAWN),
    (RETURNED, WITHDRAWN),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(STATES, STATES)))
def test_transition_is_allowed_exactly_when_the_table_says_so(current: str, target: str) -> None:
    if (current, target) in EXPECTED:
        assert rules.check_transition(current, target)
    else:
        with pytest.raises(IllegalTransition):
            rules.check_transition(current, target)


def test_transition_table_is_the_documented_life_of_a_request() -> None:
    assert set(rules.TRANSITIONS) == EXPECTED


def test_terminal_states_never_change() -> None:
    assert TERMINAL_STATES == {"rejected", WITHDRAWN, REVOKED}
    for state in TERMINAL_STATES:
        assert rules.allowed_targets(state) == []


def test_withdrawal_is_impossible_once_approved() -> None:
    for state in (APPROVED, RELEASED):
        with pytest.raises(IllegalTransition, match="cannot become withdrawn"):
            rules.check_transition(state, WITHDRAWN)


def test_every_state_is_reachable_from_draft() -> None:
    seen, frontier = {DRAFT}, [DRAFT]
    while frontier:
        for nxt in rules.allowed_targets(frontier.pop()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(STATES)


def test_unknown_state_is_refused_with_its_name() -> None:
    with pytest.raises(IllegalTransition, match="Unknown output request state: flying"):
        rules.check_transition(DRAFT, "flying")


def test_diagram_in_docs_is_generated_from_the_table_and_not_stale() -> None:
    text = rules.DOCS_PATH.read_text(encoding="utf-8")

    assert rules.docs_with_diagram(text) == text, "run `python -m disclosure.rules --write`"
    for (frm, to), step in rules.TRANSITIONS.items():
        assert f"{frm} --> {to}: {step}" in text


def test_diagram_marks_every_terminal_state_as_an_end() -> None:
    diagram = rules.mermaid_diagram()
    for state in TERMINAL_STATES:
        assert f"{state} --> [*]" in diagram


@pytest.mark.parametrize("setting, expected", [(None, 2), (2, 2), (3, 3), (1, 1), (0, 1), (-4, 1), ("x", 2)])
def test_reviews_required_defaults_to_two_and_is_never_below_one(setting: object, expected: int) -> None:
    assert rules.reviews_required(setting) == expected


def test_changes_requested_vote_needs_a_comment() -> None:
    with pytest.raises(RuleViolation, match="comment is required"):
        rules.check_vote(rules.VOTE_CHANGES, "  ")
    rules.check_vote(rules.VOTE_CHANGES, "Round to 5")
    rules.check_vote(rules.VOTE_APPROVE, "")


def test_review_is_incomplete_while_a_file_is_undecided() -> None:
    with pytest.raises(RuleViolation, match="1 still undecided"):
        rules.check_review_complete({"a": "approve", "b": "undecided"}, ["a", "b"])
    with pytest.raises(RuleViolation, match="1 still undecided"):
        rules.check_review_complete({"a": "approve"}, ["a", "b"])
    rules.check_review_complete({"a": "approve", "b": "changes_requested"}, ["a", "b"])


def test_consolidation_waits_for_every_review_and_approval_needs_every_file_approved() -> None:
    with pytest.raises(RuleViolation, match="1 of 2 done"):
        rules.check_consolidation("approve", "", 1, 2, True)
    with pytest.raises(RuleViolation, match="approved by every reviewer"):
        rules.check_consolidation("approve", "", 2, 2, False)
    with pytest.raises(RuleViolation, match="comment they will see"):
        rules.check_consolidation("return", "", 2, 2, False)
    rules.check_consolidation("approve", "", 2, 2, True)
    rules.check_consolidation("reject", "Identifies a hospital", 2, 2, False)


def test_submission_lists_everything_missing() -> None:
    groups = [rules.GroupFacts("tables", "", "", 2), rules.GroupFacts("empty", "", "", 0)]

    problems = rules.missing_for_submission("", groups, 2)

    assert problems == [
        "Give the request a title",
        "Describe the context of group tables: what it shows, population, denominators",
        "Describe the disclosure controls applied in group tables",
    ]
    assert rules.missing_for_submission("T", [], 0) == ["Add at least one file"]


@pytest.mark.parametrize(
    "name, content, kind",
    [
        ("table.csv", b"a,b\n1,2\n", "table"),
        ("notes.txt", b"hello", "text"),
        ("results.json", b"{}", "text"),
        ("figure.png", rules.PNG_MAGIC + b"rest", "image"),
    ],
)
def test_accepted_file_types(name: str, content: bytes, kind: str) -> None:
    assert rules.check_file(name, content).kind == kind


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("../etc/passwd.csv", b"a", "folder path"),
        ("dir/table.csv", b"a", "folder path"),
        ("..\\table.csv", b"a", "folder path"),
        (".hidden.csv", b"a", "may not start with a dot"),
        ("page.html", b"<script>", "active content"),
        ("figure.svg", b"<svg/>", "active content"),
        ("outputs.zip", b"PK\x03\x04....", "archives"),
        ("disguised.csv", b"PK\x03\x04....", "archives"),
        ("bundle.tar.gz", b"\x1f\x8b....", "archives"),
        ("data.parquet", b"PAR1", "archives"),
        ("model.pkl", b"x", "not accepted"),
        ("empty.csv", b"", "empty"),
        ("fake.png", b"GIF89a", "not a PNG"),
        ("latin.txt", "café".encode("latin-1"), "UTF-8"),
    ],
)
def test_refused_files_say_why(name: str, content: bytes, message: str) -> None:
    with pytest.raises(RuleViolation, match=message):
        rules.check_file(name, content)


def test_file_over_the_size_limit_is_refused() -> None:
    with pytest.raises(RuleViolation, match="larger than 1 MB"):
        rules.check_file("big.txt", b"x" * (1024 * 1024 + 1), max_bytes=1024 * 1024)


def test_table_with_too_many_rows_is_refused() -> None:
    content = b"a,b\n" + b"1,2\n" * (rules.MAX_CSV_ROWS + 1)
    with pytest.raises(RuleViolation, match="rows at most"):
        rules.check_file("long.csv", content)


@pytest.mark.parametrize(
    "spec, message",
    [
        ([], "JSON object"),
        ({"statistic": "count"}, "dimensions"),
        ({"dims": ["a"], "statistic": "prod"}, "count, sum, mean, median"),
        ({"dims": ["a"], "statistic": "sum"}, "value column"),
        ({"dims": ["a"], "statistic": "count", "dataset": "../other"}, "plain dataset name"),
        ({"dims": ["a"], "statistic": "count", "filters": "sex == 'F'"}, "not a predicate"),
        ({"dims": ["a"], "statistic": "count", "filters": [{"column": "a", "op": "~"}]}, "not a predicate"),
    ],
)
def test_malformed_table_specification_is_refused(spec: object, message: str) -> None:
    with pytest.raises(RuleViolation, match=message):
        rules.check_table_spec(spec)


def test_absent_table_specification_is_none() -> None:
    assert rules.check_table_spec(None) is None
    assert rules.check_table_spec({}) is None


def test_table_specification_with_unknown_or_predicate_filters_is_accepted() -> None:
    unknown = {"dims": ["a"], "statistic": "count", "dataset": "d", "filters": None}
    assert rules.check_table_spec(unknown) == unknown
    either = [{"any": [[{"column": "sex", "op": "==", "value": "F"}], [{"column": "age", "op": "<", "value": 5}]]}]
    assert rules.check_table_spec({**unknown, "filters": either})["filters"] == either
