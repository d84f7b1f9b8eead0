"""The database itself refuses what the output queue's domain says can never be, on both backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from disclosure.models import (
    OutputCheck,
    OutputDecision,
    OutputFile,
    OutputGroup,
    OutputRelease,
    OutputRequest,
    OutputVote,
)
from tests.disclosure.factories import active_project, person, platform
from tre.core.db import utcnow

SHA = "a" * 64


class Rows:
    def __init__(self, app: Any) -> None:
        self.s = platform(app).db.session
        self.author = person(app, "rita", ["researcher"])
        self.checker = person(app, "olive", ["output_checker"])
        self.project = active_project(app, self.author)
        self.request = self.add(OutputRequest(project_id=self.project.id, author_id=self.author.id, title="T"))
        self.group = self.add(OutputGroup(request_id=self.request.id, name="g"))
        self.file = self.add(
            OutputFile(
                request_id=self.request.id,
                group_id=self.group.id,
                name="t.csv",
                kind="table",
                content_type="text/csv",
                sha256=SHA,
                size_bytes=10,
                added_by=self.author.id,
            )
        )

    def add(self, row: Any) -> Any:
        self.s.add(row)
        self.s.commit()
        return row

    def refused(self, make: Callable[[], Any]) -> bool:
        try:
            self.s.add(make())
            self.s.commit()
        except IntegrityError:
            self.s.rollback()
            return True
        return False


@pytest.fixture
def rows(app: Any) -> Iterator[Rows]:
    with app.app_context():
        yield Rows(app)


def test_request_state_must_be_one_of_the_known_states(rows: Rows) -> None:
    assert rows.refused(lambda: OutputRequest(project_id=rows.project.id, author_id=rows.author.id, state="flying"))


def test_request_needs_at_least_one_independent_review(rows: Rows) -> None:
    assert rows.refused(lambda: OutputRequest(project_id=rows.project.id, author_id=rows.author.id, reviews_required=0))


def test_request_past_draft_has_a_submission_time(rows: Rows) -> None:
    assert rows.refused(
        lambda: OutputRequest(project_id=rows.project.id, author_id=rows.author.id, state="awaiting_review")
    )


def test_released_time_is_set_exactly_when_released(rows: Rows) -> None:
    now = utcnow()
    assert rows.refused(
        lambda: OutputRequest(project_id=rows.project.id, author_id=rows.author.id, state="released", submitted_at=now)
    )
    assert rows.refused(
        lambda: OutputRequest(
            project_id=rows.project.id, author_id=rows.author.id, state="approved", submitted_at=now, released_at=now
        )
    )


def test_idempotency_key_is_unique_per_project(rows: Rows) -> None:
    rows.add(OutputRequest(project_id=rows.project.id, author_id=rows.author.id, client_key="k"))

    assert rows.refused(lambda: OutputRequest(project_id=rows.project.id, author_id=rows.author.id, client_key="k"))


def test_changes_requested_vote_carries_a_comment(rows: Rows) -> None:
    assert rows.refused(
        lambda: OutputVote(
            request_id=rows.request.id,
            file_id=rows.file.id,
            reviewer_id=rows.checker.id,
            vote="changes_requested",
            comment=" ",
            round=1,
        )
    )


def test_one_vote_per_checker_per_file(rows: Rows) -> None:
    rows.add(
        OutputVote(
            request_id=rows.request.id, file_id=rows.file.id, reviewer_id=rows.checker.id, vote="approve", round=1
        )
    )

    assert rows.refused(
        lambda: OutputVote(
            request_id=rows.request.id, file_id=rows.file.id, reviewer_id=rows.checker.id, vote="undecided", round=1
        )
    )


def test_one_automated_check_per_file_and_policy(rows: Rows) -> None:
    def check() -> OutputCheck:
        return OutputCheck(
            file_id=rows.file.id,
            request_id=rows.request.id,
            sha256=SHA,
            policy_sha256="p" * 64,
            policy_version="1",
            status="pass",
        )

    rows.add(check())

    assert rows.refused(check)


def test_check_status_is_pass_review_fail_or_error(rows: Rows) -> None:
    assert rows.refused(
        lambda: OutputCheck(
            file_id=rows.file.id,
            request_id=rows.request.id,
            sha256=SHA,
            policy_sha256="q" * 64,
            policy_version="1",
            status="maybe",
        )
    )


def test_return_or_rejection_carries_a_comment(rows: Rows) -> None:
    assert rows.refused(
        lambda: OutputDecision(
            request_id=rows.request.id, round=1, outcome="reject", comment="", decided_by=rows.checker.id
        )
    )


def test_revocation_is_recorded_with_who_and_why(rows: Rows) -> None:
    assert rows.refused(
        lambda: OutputRelease(
            request_id=rows.request.id,
            project_id=rows.project.id,
            bundle_sha256=SHA,
            bundle_bytes=1,
            released_by=rows.checker.id,
            revoked_at=utcnow(),
        )
    )


def test_superseded_file_records_the_round(rows: Rows) -> None:
    assert rows.refused(
        lambda: OutputFile(
            request_id=rows.request.id,
            group_id=rows.group.id,
            name="x.csv",
            kind="table",
            content_type="text/csv",
            sha256=SHA,
            size_bytes=1,
            added_by=rows.author.id,
            superseded_at=utcnow(),
        )
    )


def test_file_kind_is_table_text_or_image(rows: Rows) -> None:
    assert rows.refused(
        lambda: OutputFile(
            request_id=rows.request.id,
            group_id=rows.group.id,
            name="x.zip",
            kind="archive",
            content_type="application/zip",
            sha256=SHA,
            size_bytes=1,
            added_by=rows.author.id,
        )
    )
