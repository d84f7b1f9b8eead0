"""Clerical review of the uncertain band: a linkage officer lists, views side by side and decides;
every list, view and decision is audited without identifiers; decisions are applied by the next run.
The attacks: a researcher, an output checker, an administrator, a custodian and an auditor never see
a candidate pair's identifiers, through the service or the pages, and each refusal is audited; the
linkage officer role is never held with the researcher's or the checker's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pseudonymisation.linkage import LinkageSettings
from pseudonymisation.linkage_review import LinkageReview
from pseudonymisation.person_index import LinkagePermissionDenied, LinkageServiceError, PersonIndex
from pseudonymisation.person_index_models import LinkageCandidate, LinkageRun, PersonIndexEntry
from tests.projects.factories import build_world, make_user
from tests.pseudonymisation.test_person_index import _register
from tre.core.audit import AuditEvent
from tre.core.db import transaction, utcnow
from tre.core.identity import Identity, IdentityError, UserRole
from tre.core.permissions import Permission, has_permission
from tre.demo import linkage_sources

# A high threshold and a low floor put many pairs in the uncertain band, so there is work to review.
SETTINGS = LinkageSettings(threshold=0.999, review_floor=0.2)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Path]]:
    made = linkage_sources.generate(300, seed=11)
    return made, linkage_sources.write(made, tmp_path_factory.mktemp("review"))


def _platform_index(app: Any) -> PersonIndex:
    p = app.extensions["tre.platform"]
    return PersonIndex(p.db.session, p.audit, p.keys, settings=SETTINGS)


def _review(app: Any) -> LinkageReview:
    p = app.extensions["tre.platform"]
    return LinkageReview(p.db.session, p.audit, p.keys)


@pytest.fixture
def world(app: Any, generated: Any) -> Any:
    _, paths = generated
    w = build_world(app)
    _register(app, w, paths)
    with app.app_context():
        run = _platform_index(app).request_run(w.custodian)
    w.run_id = run.id
    w.officer = make_user(app, "lina.linkage", ["linkage_officer"])
    w.checker = make_user(app, "olive.checker", ["output_checker"])
    w.auditor = make_user(app, "audrey.auditor", ["auditor"])
    return w


def _identifiers(made: Any, source: str, record_id: str) -> list[str]:
    table = made.tables[source]
    i = table.column("record_id").to_pylist().index(record_id)
    values = [table.column(c)[i].as_py() for c in ("nhs_number", "first_name", "surname", "postcode")]
    return [str(v) for v in values if v]


def _events(app: Any, action: str) -> list[AuditEvent]:
    with app.extensions["tre.db"].session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def test_linkage_officer_views_a_pair_side_by_side_and_every_view_is_audited_without_identifiers(
    app: Any, world: Any, generated: Any
) -> None:
    made, _ = generated
    run, pending = _review(app).queue(world.officer)
    assert run is not None and run.id == world.run_id and pending

    pair = _review(app).view(world.officer, pending[0].id)
    assert pair.left is not None and pair.right is not None
    assert (pair.left.source, pair.left.record_id) == (pending[0].left_source, pending[0].left_record_id)
    assert [r[0] for r in pair.rows()] == ["nhs_number", "first_name", "surname", "date_of_birth", "sex", "postcode"]

    views = _events(app, "linkage.view_pair")
    assert [(e.actor_id, e.target_id, e.outcome) for e in views] == [(world.officer.id, pending[0].id, "success")]
    logged = json.dumps([e.detail for e in _events(app, "linkage.view_pair") + _events(app, "linkage.review_queue")])
    for value in _identifiers(made, pair.left.source, pair.left.record_id):
        assert value not in logged


class _Pair:
    """A candidate's keys as plain text (a row's attributes expire when a service call commits)."""

    def __init__(self, *values: str) -> None:
        names = ("id", "left_source", "left_record_id", "right_source", "right_record_id")
        for name, value in zip(names, values, strict=False):
            setattr(self, name, value)


def test_linkage_officer_decisions_are_applied_by_the_next_run(app: Any, world: Any) -> None:
    _, pending = _review(app).queue(world.officer)
    pairs = [_Pair(c.id, c.left_source, c.left_record_id, c.right_source, c.right_record_id) for c in pending]
    with app.extensions["tre.db"].session_factory() as s:
        person = {(e.source, e.record_id): e.person_id
                  for e in s.scalars(select(PersonIndexEntry).where(PersonIndexEntry.run_id == world.run_id))}

    def people(c: _Pair) -> set[int]:
        return {person[(c.left_source, c.left_record_id)], person[(c.right_source, c.right_record_id)]}

    # Two decisions about four different people, so neither can bear on the other.
    match = pairs[0]
    no_match = next(c for c in pairs[1:] if not people(c) & people(match))
    _review(app).decide(world.officer, match.id, "match", "Same person: a nickname and a new address.")
    _review(app).decide(world.officer, no_match.id, "no_match", "Twins: different first names.")
    with pytest.raises(LinkageServiceError, match="already been decided"):
        _review(app).decide(world.officer, match.id, "no_match", "Changed my mind")

    with app.app_context():
        second = _platform_index(app).request_run(world.custodian)
    assert second.id != world.run_id  # the decisions are inputs: a new run
    with app.extensions["tre.db"].session_factory() as s:
        assert s.get(LinkageRun, second.id).quality["decisions_applied"] == 2  # type: ignore[union-attr]

        def entry(source: str, record_id: str) -> PersonIndexEntry:
            found = s.get(PersonIndexEntry, (second.id, source, record_id))
            assert found is not None
            return found

        left, right = entry(match.left_source, match.left_record_id), entry(match.right_source, match.right_record_id)
        assert left.person_id == right.person_id
        assert "clerical" in (left.method, right.method) or {left.method, right.method} == {"deterministic"}
        apart = (entry(no_match.left_source, no_match.left_record_id),
                 entry(no_match.right_source, no_match.right_record_id))
        assert apart[0].person_id != apart[1].person_id
        again = {c.left_record_id + c.right_record_id for c in
                 s.scalars(select(LinkageCandidate).where(LinkageCandidate.run_id == second.id))}
    assert match.left_record_id + match.right_record_id not in again
    assert no_match.left_record_id + no_match.right_record_id not in again
    decided = _events(app, "linkage.decide")
    assert [(e.outcome, e.detail["decision"]) for e in decided] == [("success", "match"), ("success", "no_match")]


def test_linkage_decision_without_a_reason_or_with_an_unknown_verdict_changes_nothing(app: Any, world: Any) -> None:
    _, pending = _review(app).queue(world.officer)
    with pytest.raises(LinkageServiceError, match="reason"):
        _review(app).decide(world.officer, pending[0].id, "match", "   ")
    with pytest.raises(LinkageServiceError, match="match or no_match"):
        _review(app).decide(world.officer, pending[0].id, "maybe", "unsure")
    assert _events(app, "linkage.decide") == []


@pytest.mark.parametrize("who", ["pi", "checker", "admin", "custodian", "auditor", "chair"])
def test_no_one_but_a_linkage_officer_sees_candidate_pairs_and_each_refusal_is_audited(
    app: Any, world: Any, who: str
) -> None:
    actor = getattr(world, who)
    candidate = _Pair(_review(app).queue(world.officer)[1][0].id)  # only its id, kept as text
    for attempt in (
        lambda: _review(app).queue(actor),
        lambda: _review(app).view(actor, candidate.id),
        lambda: _review(app).decide(actor, candidate.id, "match", "I am curious"),
    ):
        with pytest.raises(LinkagePermissionDenied):
            attempt()
    refused = [e for a in ("linkage.review_queue", "linkage.view_pair", "linkage.decide") for e in _events(app, a)
               if e.actor_id == actor.id]
    assert [e.outcome for e in refused] == ["denied"] * 3


def _login(client: Any, user: Any) -> Any:
    with client.session_transaction() as sess:
        sess["uid"] = user.id
        sess["epoch"] = user.session_epoch
        sess["seen"] = sess["signed_in"] = int(utcnow().timestamp())
    return client


@pytest.mark.parametrize("who", ["pi", "checker", "admin", "custodian", "auditor"])
def test_review_pages_refuse_everyone_but_a_linkage_officer_and_show_no_identifier(
    app: Any, world: Any, generated: Any, who: str
) -> None:
    made, _ = generated
    candidate = _review(app).queue(world.officer)[1][0]
    secrets = _identifiers(made, candidate.left_source, candidate.left_record_id)
    client = _login(app.test_client(), getattr(world, who))
    for url in ("/linkage/review", f"/linkage/review/{candidate.id}"):
        response = client.get(url)
        assert response.status_code == 403, url
        assert not any(s in response.get_data(as_text=True) for s in secrets)

    officer = _login(app.test_client(), world.officer)
    page = officer.get(f"/linkage/review/{candidate.id}")
    assert page.status_code == 200
    assert all(s in page.get_data(as_text=True) for s in secrets)


def test_custodian_sees_the_quality_page_with_match_rates_and_no_identifier(
    app: Any, world: Any, generated: Any
) -> None:
    made, _ = generated
    page = _login(app.test_client(), world.custodian).get(f"/linkage/runs/{world.run_id}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'id="linkage-sources"' in text and "social_care" in text and 'id="linkage-weights"' in text
    for chart in ("linkage-match-rates", "linkage-methods", "linkage-precision-recall", "linkage-weights"):
        assert f'<figure class="tre-chart" id="{chart}">' in text and f'id="{chart}-table"' in text, chart
    first = made.tables["hospital"]
    for column in ("nhs_number", "postcode"):
        assert first.column(column)[0].as_py() not in text
    assert _login(app.test_client(), world.pi).get(f"/linkage/runs/{world.run_id}").status_code == 403
    figures = _login(app.test_client(), world.custodian).get(f"/linkage/runs/{world.run_id}/quality.json")
    assert figures.status_code == 200 and set(figures.json["quality"]["sources"]) == set(made.tables)
    assert _login(app.test_client(), world.pi).get(f"/linkage/runs/{world.run_id}/quality.json").status_code == 403


def test_linkage_officer_role_is_never_held_with_a_researcher_or_checker_role(app: Any, world: Any) -> None:
    p = app.extensions["tre.platform"]
    ident = Identity(p.db.session, p.keys, p.audit)
    for other in ("researcher", "output_checker"):
        with pytest.raises(IdentityError, match="separation of duties"):
            ident.create_user(world.admin, f"both-{other}@nhs.example", "Both", ["linkage_officer", other])
        with pytest.raises(IdentityError, match="separation of duties"):
            ident.set_roles(world.admin, world.officer.id, ["linkage_officer", other])
    # Asked to become a linkage officer, then made a researcher while the request waited: a second
    # administrator cannot approve it.
    second_admin = make_user(app, "adam.second", ["administrator"])
    ursula = make_user(app, "ursula.new", [])
    ident.set_roles(world.admin, ursula.id, ["linkage_officer"])
    ident.set_roles(world.admin, ursula.id, ["researcher"])
    from tre.core.roles import pending_grants

    (grant,) = [g for g in pending_grants(p.db.session, ursula.id) if g.role == "linkage_officer"]
    with pytest.raises(Exception, match="separation of duties"):
        ident.decide_role_grant(second_admin, grant.id, approve=True)
    # Roles put together behind the services' back still grant no review.
    with transaction(p.db.session) as s:
        s.add(UserRole(user_id=world.officer.id, role="researcher"))
    p.db.session.expire_all()
    assert not has_permission(world.officer, Permission.LINKAGE_REVIEW)
    with pytest.raises(LinkagePermissionDenied):
        _review(app).queue(world.officer)
