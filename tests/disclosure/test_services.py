"""The output queue's use cases, on SQLite and PostgreSQL: each one all-or-nothing, audited."""

from __future__ import annotations

import hashlib
import io
import zipfile
from typing import Any

import pytest
from sqlalchemy import func, select

from disclosure import rules
from disclosure.models import OutputCheck, OutputDecision, OutputFile, OutputRequest, OutputVote
from disclosure.services import IncompleteRequest, OutputError, OutputPermissionDenied
from tests.disclosure.factories import SAFE_CSV, SMALL_CELL_CSV, World, outputs, run_queued_jobs
from tests.statements import count_statements
from tre.core.audit import AuditEvent
from tre.core.notifications import OutboxMessage


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        yield World(app)


def _actions(world: World, request_id: str) -> list[str]:
    return list(
        world.session.scalars(
            select(AuditEvent.action).where(AuditEvent.target_id == request_id).order_by(AuditEvent.seq)
        )
    )


def _count(world: World, model: Any) -> int:
    return int(world.session.scalar(select(func.count()).select_from(model)) or 0)


def test_request_is_refused_to_someone_the_access_gate_refuses(world: World) -> None:
    with pytest.raises(OutputPermissionDenied, match="not a member of the project"):
        world.svc.create_request(world.outsider, world.project.id, "Mine")

    assert _count(world, OutputRequest) == 0
    denied = world.session.scalars(select(AuditEvent).where(AuditEvent.action == "output.create")).all()
    assert [e.outcome for e in denied] == ["denied"]
    assert "not_a_member" in denied[0].detail["reason"]


def test_same_idempotency_key_returns_the_request_it_already_made(world: World) -> None:
    first, created = world.svc.create_request(world.author, world.project.id, "T", client_key="abc")
    again, created_again = world.svc.create_request(world.author, world.project.id, "T", client_key="abc")

    assert (created, created_again) == (True, False)
    assert again.id == first.id
    assert _count(world, OutputRequest) == 1


def test_submission_is_refused_with_everything_missing_until_groups_have_context_and_controls(
    world: World,
) -> None:
    req, _ = world.svc.create_request(world.author, world.project.id, "Admissions")
    world.svc.add_file(world.author, req.id, "table.csv", SAFE_CSV, group="tables")

    with pytest.raises(IncompleteRequest) as refused:
        world.svc.submit(world.author, req.id)

    assert refused.value.problems == [
        "Describe the context of group tables: what it shows, population, denominators",
        "Describe the disclosure controls applied in group tables",
    ]
    assert world.refresh(req).state == rules.DRAFT


def test_added_file_is_copied_into_the_encrypted_store_under_its_hash(world: World) -> None:
    req = world.draft(SMALL_CELL_CSV)
    f = world.refresh(req).current_files[0]
    store = world.svc.files

    assert f.sha256 == hashlib.sha256(SMALL_CELL_CSV).hexdigest()
    assert store.get(f.sha256) == SMALL_CELL_CSV
    on_disk = store._path(f.sha256).read_bytes()
    assert SMALL_CELL_CSV not in on_disk


def test_refused_file_changes_nothing(world: World) -> None:
    req = world.draft()

    with pytest.raises(OutputError, match="archives"):
        world.svc.add_file(world.author, req.id, "all.zip", b"PK\x03\x04rest")

    assert len(world.refresh(req).current_files) == 1


def test_submitted_request_reaches_review_with_a_verdict_per_file_and_cell(world: World) -> None:
    req = world.submitted(content=SMALL_CELL_CSV)

    assert req.state == rules.AWAITING_REVIEW
    check = world.session.scalars(select(OutputCheck)).one()
    assert check.status == "fail"
    flagged = [c for c in check.verdict["cells"] if "threshold" in c["rules"]]
    assert [(c["labels"] if "labels" in c else c) for c in flagged]
    assert check.recompute["status"] == "not_done"
    assert "output.submit" in _actions(world, req.id)
    assert "output.checks_done" in _actions(world, req.id)


def test_author_and_project_members_cannot_review(world: World) -> None:
    req = world.submitted()
    from tre.core.db import transaction
    from tre.core.identity import UserRole

    with transaction(world.session):
        world.session.add(UserRole(user_id=world.colleague.id, role="output_checker"))
    world.session.expire_all()

    for who in (world.author, world.colleague):
        with pytest.raises(OutputPermissionDenied, match="neither the author nor on the project"):
            world.svc.claim(who, req.id)


def test_votes_and_private_comments_stay_blind_until_every_review_is_in(world: World) -> None:
    req = world.submitted()
    f = req.current_files[0]
    world.svc.claim(world.olive, req.id)
    world.svc.claim(world.oscar, req.id)
    world.svc.vote(world.olive, req.id, f.id, "changes_requested", "Suppress North/male")
    world.svc.comment(world.olive, req.id, "Looks like a small cell", "private")
    world.svc.submit_review(world.olive, req.id)

    before = world.svc.review_picture(world.oscar, world.refresh(req), "checker")
    world.svc.vote(world.oscar, req.id, f.id, "approve")
    world.svc.submit_review(world.oscar, req.id)
    after = world.svc.review_picture(world.oscar, world.refresh(req), "checker")

    assert not before.unblinded
    assert before.votes == [] and before.comments == []
    assert after.unblinded
    assert {v.reviewer_id for v in after.votes} == {world.olive.id, world.oscar.id}
    assert [c.body for c in after.comments] == ["Looks like a small cell"]


def test_team_never_sees_private_comments_or_who_voted(world: World) -> None:
    req = world.reviewed(votes={"olive": "changes_requested"})
    world.svc.comment(world.olive, req.id, "Private note", "private")
    world.svc.consolidate(world.olive, req.id, "return", "Please suppress the small cell")

    picture = world.svc.review_picture(world.author, world.refresh(req), "team")

    assert [c.body for c in picture.comments] == ["Please suppress the small cell"]
    assert picture.reviews == []
    assert [v.comment for v in picture.votes] == ["Round the counts"]


def test_changes_requested_without_a_comment_is_refused(world: World) -> None:
    req = world.submitted()
    world.svc.claim(world.olive, req.id)

    with pytest.raises(OutputError, match="comment is required"):
        world.svc.vote(world.olive, req.id, req.current_files[0].id, "changes_requested", " ")

    assert _count(world, OutputVote) == 0


def test_review_places_are_limited_to_the_reviews_required(world: World) -> None:
    req = world.submitted()
    world.svc.claim(world.olive, req.id)
    world.svc.assign(world.olive, req.id, world.oscar.id)

    with pytest.raises(OutputError, match="All 2 review places are taken"):
        world.svc.claim(world.otto, req.id)


def test_consolidation_waits_for_both_reviews(world: World) -> None:
    req = world.submitted()
    f = req.current_files[0]
    world.svc.claim(world.olive, req.id)
    world.svc.vote(world.olive, req.id, f.id, "approve")
    world.svc.submit_review(world.olive, req.id)

    with pytest.raises(OutputError, match="1 of 2 done"):
        world.svc.consolidate(world.olive, req.id, "approve")
    assert world.refresh(req).state == rules.AWAITING_REVIEW


def test_return_and_resubmission_reset_votes_only_on_changed_files_and_keep_history(world: World) -> None:
    req = world.draft(SMALL_CELL_CSV)
    world.svc.add_file(world.author, req.id, "notes.txt", b"Method notes", group="tables")
    world.svc.submit(world.author, req.id)
    run_queued_jobs(world.app)
    req = world.refresh(req)
    notes, table = sorted(req.current_files, key=lambda f: f.name)
    for checker in (world.olive, world.oscar):
        world.svc.claim(checker, req.id)
        world.svc.vote(checker, req.id, table.id, "changes_requested", "Suppress the small cell")
        world.svc.vote(checker, req.id, notes.id, "approve")
        world.svc.submit_review(checker, req.id)
    world.svc.consolidate(world.olive, req.id, "return", "Suppress counts under 10")

    world.svc.add_file(world.author, req.id, "table.csv", SAFE_CSV, group="tables")
    world.svc.submit(world.author, req.id)
    run_queued_jobs(world.app)
    req = world.refresh(req)

    assert req.state == rules.AWAITING_REVIEW and req.round == 2
    new_table = next(f for f in req.current_files if f.name == "table.csv")
    assert new_table.id != table.id
    old = world.session.get(OutputFile, table.id)
    assert old.superseded_at is not None and old.superseded_in_round == 1
    votes = world.session.scalars(select(OutputVote)).all()
    assert {v.file_id for v in votes if v.vote == "approve"} == {notes.id}
    assert not [v for v in votes if v.file_id == new_table.id]
    assert world.session.scalars(select(OutputCheck).where(OutputCheck.file_id == new_table.id)).one().status != "fail"
    actions = _actions(world, req.id)
    assert actions.count("output.checks_done") == 2 and "output.return" in actions and "output.resubmit" in actions


def test_release_bundle_is_deterministic_and_holds_files_verdicts_record_and_decisions(world: World) -> None:
    req = world.released(content=SAFE_CSV)
    data, release = world.svc.download(world.colleague, req.id)

    from disclosure.models import OutputDecision as D
    from disclosure.release import build_bundle
    from disclosure.services import _checks_by_file

    decision = world.session.scalars(select(D)).one()
    rebuilt, _ = build_bundle(world.session, req, world.svc.files, _checks_by_file(world.session, req), decision)
    assert rebuilt == data
    assert hashlib.sha256(data).hexdigest() == release.bundle_sha256
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert set(names) == {
        "files/tables/table.csv",
        "verdicts.json",
        "disclosure-control-record.json",
        "decisions.json",
        "manifest.json",
        "SHA256SUMS",
    }
    assert zipfile.ZipFile(io.BytesIO(data)).read("files/tables/table.csv") == SAFE_CSV


def test_only_the_project_team_downloads_and_each_download_is_audited(world: World) -> None:
    req = world.released(content=SAFE_CSV)

    world.svc.download(world.author, req.id)
    world.svc.download(world.colleague, req.id)
    for stranger in (world.outsider, world.olive):
        with pytest.raises(OutputPermissionDenied, match="access gate|the project's team once released"):
            world.svc.download(stranger, req.id)

    events = world.session.scalars(select(AuditEvent).where(AuditEvent.action == "output.download")).all()
    assert sorted((e.actor_id, e.outcome) for e in events) == sorted(
        [
            (world.author.id, "success"),
            (world.colleague.id, "success"),
            (world.outsider.id, "denied"),
            (world.olive.id, "denied"),
        ]
    )


def test_revoked_release_can_no_longer_be_downloaded(world: World) -> None:
    req = world.released(content=SAFE_CSV)

    with pytest.raises(OutputError, match="reason"):
        world.svc.revoke(world.olive, req.id, "")
    world.svc.revoke(world.olive, req.id, "A small cell was missed")

    with pytest.raises(OutputPermissionDenied, match="the project's team once released"):
        world.svc.download(world.author, req.id)
    assert world.refresh(req).state == rules.REVOKED


def test_release_refuses_when_the_files_differ_from_the_approved_hashes(world: World) -> None:
    req = world.approved(content=SAFE_CSV)
    decision = world.session.scalars(select(OutputDecision)).one()
    from tre.core.db import transaction

    with transaction(world.session):
        decision.file_hashes = {k: "0" * 64 for k in decision.file_hashes}

    with pytest.raises(OutputError, match="differ from the ones approved"):
        world.svc.release(world.olive, req.id)
    assert world.refresh(req).state == rules.APPROVED


def test_withdrawal_is_refused_after_approval(world: World) -> None:
    req = world.approved(content=SAFE_CSV)

    with pytest.raises(OutputError, match="cannot become withdrawn"):
        world.svc.withdraw(world.author, req.id)


def test_withdrawn_request_never_changes_again(world: World) -> None:
    req = world.submitted()
    world.svc.withdraw(world.author, req.id)

    with pytest.raises(OutputError):
        world.svc.submit(world.author, req.id)
    with pytest.raises(OutputError):
        world.svc.claim(world.olive, req.id)
    assert world.refresh(req).state == rules.WITHDRAWN


def test_one_review_suffices_when_the_policy_says_one(app: Any) -> None:
    with app.app_context():
        world = World(app)
        world.svc = outputs(app, reviews_required=1)
        req = world.submitted(content=SAFE_CSV)
        world.svc.claim(world.olive, req.id)
        world.svc.vote(world.olive, req.id, req.current_files[0].id, "approve")
        world.svc.submit_review(world.olive, req.id)

        world.svc.consolidate(world.olive, req.id, "approve")

        assert world.refresh(req).state == rules.APPROVED


def test_each_change_of_turn_notifies_the_people_whose_turn_it_is(world: World) -> None:
    req = world.released(content=SAFE_CSV)

    topics = {(m.topic, m.recipient_id) for m in world.session.scalars(select(OutboxMessage))}

    assert ("output.ready", world.otto.id) in topics  # no one had claimed it yet: every eligible checker
    assert ("output.checked", world.author.id) in topics
    assert ("output.reviews_complete", world.olive.id) in topics
    assert ("output.approve", world.author.id) in topics and ("output.approve", world.colleague.id) in topics
    assert ("output.released", world.colleague.id) in topics
    assert req.state == rules.RELEASED


def test_project_release_ledger_grows_only_at_release(world: World, tmp_path: Any) -> None:
    from disclosure.models import ProjectReleaseLedger
    from tests.disclosure.test_checks import SPEC, write_extract

    write_extract(world.app, world.project.id)
    req = world.approved(content=_recomputed_csv(world), spec=SPEC)
    assert world.session.get(ProjectReleaseLedger, world.project.id) is None

    world.svc.release(world.olive, req.id)

    ledger = world.session.get(ProjectReleaseLedger, world.project.id)
    assert len(ledger.ledger["entries"]) == 1


def _recomputed_csv(world: World) -> bytes:
    from tests.disclosure.test_checks import recomputed_csv

    return recomputed_csv()


def test_data_destruction_withdraws_open_requests_and_deletes_unreleased_files_only(world: World) -> None:
    from disclosure.services import destroy_unreleased_outputs
    from projects.closure import registered_hooks
    from tre.core.db import transaction

    released = world.released(content=SAFE_CSV)
    draft = world.draft(content=b"Notes never released", name="notes.txt")
    draft_sha = world.refresh(draft).current_files[0].sha256

    with transaction(world.session) as s:
        result = destroy_unreleased_outputs(s, world.project.id, files=world.svc.files)

    assert "output-files" in registered_hooks()
    assert result == {"requests_withdrawn": 1, "files_deleted": 1}
    assert world.refresh(draft).state == rules.WITHDRAWN
    assert not world.svc.files.exists(draft_sha)
    assert world.svc.files.exists(world.refresh(released).current_files[0].sha256)
    assert world.refresh(released).state == rules.RELEASED


def test_released_record_withholds_the_bounds_of_suppressed_cells(world: World) -> None:
    import json

    from tests.disclosure.test_checks import SPEC, recomputed_csv, write_extract

    write_extract(world.app, world.project.id)
    req = world.released(content=recomputed_csv(), spec=SPEC)
    check = world.session.scalars(select(OutputCheck)).one()
    data, _ = world.svc.download(world.author, req.id)

    verdicts = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("verdicts.json"))
    audit = verdicts["files/tables/table.csv"]["mitigation"]["suppression"]["audit"]
    assert isinstance(check.verdict["mitigation"]["suppression"]["audit"]["intervals"], list)
    assert audit["intervals"].endswith("bounds withheld")
    assert '"lower"' not in zipfile.ZipFile(io.BytesIO(data)).read("disclosure-control-record.json").decode()


def test_submission_tells_every_eligible_checker_in_statements_that_do_not_grow_with_their_number(
    world: World,
) -> None:
    from tests.disclosure.factories import person

    def submit_counting_statements(title: str) -> int:
        return count_statements(world.app, lambda: world.svc.submit_from_workspace(
            world.author, world.project.id, title, client_key=None,
            groups=[("outputs", "Admissions by region, adults 2020", "Counts under 10 suppressed")],
            files=[("table.csv", SAFE_CSV, "outputs", None)],
        ))[0]

    with_three = submit_counting_statements("First")
    more = [person(world.app, f"checker{n}", ["output_checker"]).id for n in range(10)]
    with_thirteen = submit_counting_statements("Second")

    assert with_thirteen == with_three
    told = set(world.session.scalars(
        select(OutboxMessage.recipient_id).where(OutboxMessage.topic == "output.submitted")
    ))
    assert told == {world.olive.id, world.oscar.id, world.otto.id, *more}


def test_rule_refusals_in_the_queue_are_audited_as_denied(world: World) -> None:
    """A checker claiming or re-releasing a released request, an author withdrawing it: each refused
    by the rules, each leaving a ``denied`` event on the request and changing nothing else."""
    req = world.released(content=SAFE_CSV)

    for attempt in (
        lambda: world.svc.claim(world.otto, req.id),
        lambda: world.svc.release(world.oscar, req.id),
        lambda: world.svc.withdraw(world.author, req.id),
    ):
        with pytest.raises(OutputError):
            attempt()

    refused = select(AuditEvent).where(AuditEvent.target_id == req.id, AuditEvent.outcome == "denied")
    denied = world.session.scalars(refused.order_by(AuditEvent.seq)).all()
    assert [(e.action, e.actor_id) for e in denied] == [
        ("output.claim", world.otto.id),
        ("output.release", world.oscar.id),
        ("output.withdraw", world.author.id),
    ]
    assert all(e.detail["reason"] == "rule" and e.detail["rule"] for e in denied)
    assert world.refresh(req).state == rules.RELEASED


def test_a_submissions_notice_goes_to_the_checkers_the_former_two_reads_chose(world: World) -> None:
    """ADR 0051: the eligible checkers and their accounts are read in one statement for a new
    submission; the notice goes to exactly those the former reads chose (``eligible_checkers``, then
    the active accounts among them), with the same email, key and text: an inactive checker, a
    checker on the project's team and a checker holding two reviewing roles included."""
    from disclosure.progress import eligible_checkers
    from tests.disclosure.factories import checkers_of_every_kind
    from tre.core.identity import User

    asleep, twice = checkers_of_every_kind(world)

    req, _ = world.svc.submit_from_workspace(
        world.author, world.project.id, "Admissions", client_key=None,
        groups=[("outputs", "Admissions by region, adults 2020", "Counts under 10 suppressed")],
        files=[("table.csv", SAFE_CSV, "outputs", None)],
    )

    s = world.session
    s.expire_all()
    chosen = eligible_checkers(s, s.get(OutputRequest, req.id))
    emails = dict(s.execute(select(User.id, User.email).where(User.id.in_(chosen), User.is_active.is_(True))).all())
    body = f"Output request {req.id}: output request submitted for checking."
    expected = [(uid, emails[uid], f"output.submitted:{req.id}:1:{uid}", body) for uid in chosen if uid in emails]
    told = s.execute(
        select(OutboxMessage.recipient_id, OutboxMessage.recipient_email, OutboxMessage.dedupe_key, OutboxMessage.body)
        .where(OutboxMessage.topic == "output.submitted").order_by(OutboxMessage.recipient_id)
    ).all()
    assert [tuple(row) for row in told] == expected
    assert {world.olive.id, world.oscar.id, world.otto.id, twice.id} == {row[0] for row in told}
    assert asleep.id in chosen and world.colleague.id not in chosen


SPEC = {"dims": ["region"], "statistic": "count"}
NOTES = b"Counts of admissions by region, adults 2020.\n"


def _submit_two_files(world: World, client_key: str | None = None) -> Any:
    req, created = world.svc.submit_from_workspace(
        world.author, world.project.id, "Admissions", groups=[("tables", "Admissions by region", "Rounded to 5")],
        files=[("table.csv", SAFE_CSV, "tables", SPEC), ("notes.txt", NOTES, "tables", None)], client_key=client_key,
    )
    assert created
    return req


def _stored(world: World, req_id: str) -> dict[str, Any]:
    """The request's rows as stored, without their ids and times (the spec also as text, so a JSON
    ``null`` and an SQL ``NULL`` differ)."""
    from sqlalchemy import String, cast

    from disclosure.models import OutputGroup

    s = world.session
    s.expire_all()
    times = {"id", "request_id", "group_id", "created_at", "state_changed_at", "submitted_at", "last_submitted_at",
             "added_at"}

    def row(obj: Any) -> dict[str, Any]:
        return {c.key: getattr(obj, c.key) for c in type(obj).__table__.columns if c.key not in times}

    groups = s.scalars(select(OutputGroup).where(OutputGroup.request_id == req_id).order_by(OutputGroup.position))
    files = s.scalars(select(OutputFile).where(OutputFile.request_id == req_id).order_by(OutputFile.name)).all()
    specs = s.execute(select(OutputFile.name, OutputFile.table_spec.is_(None), cast(OutputFile.table_spec, String))
                      .where(OutputFile.request_id == req_id).order_by(OutputFile.name)).all()
    req = s.get(OutputRequest, req_id)
    return {
        "request": row(req), "groups": [row(g) for g in groups], "files": [row(f) for f in files],
        "specs": [tuple(r) for r in specs],
        "file_groups": [f.group.name for f in files],
    }


def test_a_workspace_submission_stores_the_rows_the_use_cases_store_one_by_one(world: World) -> None:
    """Its request, groups and files (inserted by Core, ADR 0057) hold what the unit of work writes for
    the same request made step by step: same columns, same values, a JSON ``null`` spec kept as such."""
    by_workspace = _submit_two_files(world)
    step, _ = world.svc.create_request(world.author, world.project.id, "Admissions")
    world.svc.set_group(world.author, step.id, "tables", "Admissions by region", "Rounded to 5")
    world.svc.add_file(world.author, step.id, "table.csv", SAFE_CSV, group="tables", table_spec=SPEC)
    world.svc.add_file(world.author, step.id, "notes.txt", NOTES, group="tables")
    world.svc.submit(world.author, step.id)

    workspace, one_by_one = _stored(world, by_workspace.id), _stored(world, step.id)

    assert workspace == one_by_one
    assert [(is_null, spec is None) for _, is_null, spec in workspace["specs"]] == [(False, False), (False, False)]
    req = world.session.get(OutputRequest, by_workspace.id)  # made at the transaction's end, as by its flush
    files = world.session.scalars(select(OutputFile).where(OutputFile.request_id == req.id)).all()
    assert req.submitted_at == req.last_submitted_at <= req.state_changed_at <= req.created_at
    assert all(req.created_at <= f.added_at for f in files)


def test_a_workspace_submission_leaves_its_request_groups_files_and_notices_out_of_the_unit_of_work(
    world: World,
) -> None:
    """No flush of the submission's transaction carries its request, groups, files (ADR 0057) or notices
    (ADR 0076), and the answer is built from them as inserted."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from disclosure.models import OutputGroup

    flushed: list[str] = []

    def note(session: Any, _context: Any, _instances: Any) -> None:
        flushed.extend(type(obj).__name__ for obj in session.new)

    event.listen(Session, "before_flush", note)
    try:
        req = _submit_two_files(world)
    finally:
        event.remove(Session, "before_flush", note)

    assert not {OutputRequest.__name__, OutputGroup.__name__, OutputFile.__name__} & set(flushed)
    assert "OutboxMessage" not in flushed  # nor the checkers' notices: one Core insert (ADR 0076)
    assert [(g.name, g.request_id) for g in req.groups] == [("tables", req.id)]
    assert [(f.name, f.request_id, f.group_id) for f in req.current_files] == [
        ("table.csv", req.id, req.groups[0].id), ("notes.txt", req.id, req.groups[0].id)
    ]


def test_a_workspace_submission_with_an_idempotency_key_goes_through_the_unit_of_work_once(world: World) -> None:
    """With a key the request is inserted in a savepoint to catch a race, as before: the same rows, and
    the same key again answers with the same request."""
    req = _submit_two_files(world, client_key="k-1")
    again, created = world.svc.submit_from_workspace(
        world.author, world.project.id, "Admissions", client_key="k-1",
        groups=[("tables", "Admissions by region", "Rounded to 5")], files=[("table.csv", SAFE_CSV, "tables", SPEC)],
    )

    assert (again.id, created) == (req.id, False)
    assert _count(world, OutputRequest) == 1 and _count(world, OutputFile) == 2
