"""Governed re-identification of a token of a person who has no NHS number: the person index answers
with their records' identifiers, under the same rules (two approvals, active project, once), audited
with counts only; and the attacks: a wrong role, another project's token, a token of another purpose."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from pseudonymisation import tokens
from pseudonymisation.person_index_models import PersonIndexEntry
from pseudonymisation.services import LINKAGE, ExtractServiceError, _key, _project_key_name
from pseudonymisation.tasks import extracts_service, person_index_service
from tests.projects.factories import make_user
from tests.pseudonymisation.test_person_index import _active_project, _world, generated  # noqa: F401 - fixture
from tre.core.audit import AuditEvent

PURPOSE = "Recall a patient for urgent clinical care."


def _linked_extract(app: Any, generated: Any) -> tuple[Any, Any, Any, dict[str, str]]:  # noqa: F811
    """A world, an active project with an extract of both linked sources, the index run, and the
    project token of each social care record (rows come out in source order)."""
    made, paths = generated
    w = _world(app, paths)
    p = _active_project(app, w)
    platform = app.extensions["tre.platform"]
    with app.app_context():
        run = person_index_service(platform).request_run(w.custodian)
        extracts_service(platform).request(w.custodian, p.id)
    folder = app.extensions["tre.settings"].extracts_path / p.id / "social_care" / "data"
    social = pq.read_table(sorted(folder.glob("*.parquet")))
    ids = made.tables["social_care"].column("record_id").to_pylist()
    return w, p, run, dict(zip(ids, social.column("patient_token").to_pylist(), strict=True))


def _numberless_person(app: Any, generated: Any, run_id: str) -> tuple[str, set[tuple[str, str]]]:  # noqa: F811
    """A social care record whose person has no NHS number on any record, and that person's records."""
    made, _ = generated
    with app.extensions["tre.db"].session_factory() as s:
        entries = {(e.source, e.record_id): e.person_id
                   for e in s.scalars(select(PersonIndexEntry).where(PersonIndexEntry.run_id == run_id))}
    numbers = {(name, rid): number for name, table in made.tables.items()
               for rid, number in zip(table.column("record_id").to_pylist(), table.column("nhs_number").to_pylist(),
                                      strict=True)}
    members: dict[int, set[tuple[str, str]]] = {}
    for key, person in entries.items():
        members.setdefault(person, set()).add(key)
    for key, person in sorted(entries.items()):
        if key[0] == "social_care" and all(numbers[k] is None for k in members[person]):
            return key[1], members[person]
    raise AssertionError("the generator made nobody without a number")


def _approved(app: Any, w: Any, project_id: str, token_list: list[str]) -> Any:
    svc = extracts_service(app.extensions["tre.platform"])
    req = svc.request_reidentification(w.custodian, project_id, token_list, PURPOSE)
    second = make_user(app, f"second.custodian.{req.id[:6]}", ["data_custodian"])
    svc.decide_reidentification(w.chair, req.id, "approve", "Clinical need confirmed")
    svc.decide_reidentification(second, req.id, "approve", "Agreed")
    return req


def _fulfil_events(app: Any) -> list[AuditEvent]:
    with app.extensions["tre.db"].session_factory() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "reidentify.fulfil")))


def test_token_of_a_person_without_a_number_is_answered_from_the_person_index_and_audited(
    app: Any, generated: Any  # noqa: F811
) -> None:
    made, _ = generated
    w, p, run, social_tokens = _linked_extract(app, generated)
    record_id, members = _numberless_person(app, generated, run.id)
    token = social_tokens[record_id]
    req = _approved(app, w, p.id, [token])

    with app.app_context():
        answer = extracts_service(app.extensions["tre.platform"]).fulfil_reidentification(w.custodian, req.id)

    [found] = answer
    assert found["token"] == token and found["nhs_number"] is None
    assert found["person_index_run"] == run.id
    assert {(r["dataset"], r["record_id"]) for r in found["person_records"]} == members
    mine = next(r for r in found["person_records"] if r["record_id"] == record_id)
    row = made.tables["social_care"].to_pylist()[made.tables["social_care"].column("record_id").to_pylist()
                                                  .index(record_id)]
    assert (mine["first_name"], mine["surname"], mine["postcode"]) == (row["first_name"], row["surname"],
                                                                       row["postcode"])
    assert mine["date_of_birth"] == row["date_of_birth"].isoformat()
    [event] = [e for e in _fulfil_events(app) if e.outcome != "denied"]
    assert event.detail == {"tokens": 1, "by_nhs_number": 0, "by_person_index": 1, "not_found": 0}
    assert row["surname"] not in str(event.detail) and record_id not in str(event.detail)

    with app.app_context(), pytest.raises(ExtractServiceError, match="already fulfilled"):
        extracts_service(app.extensions["tre.platform"]).fulfil_reidentification(w.custodian, req.id)


def test_person_index_answer_is_refused_to_wrong_roles_and_every_refusal_audited(
    app: Any, generated: Any  # noqa: F811
) -> None:
    w, p, run, social_tokens = _linked_extract(app, generated)
    record_id, _ = _numberless_person(app, generated, run.id)
    token = social_tokens[record_id]
    svc = extracts_service(app.extensions["tre.platform"])
    officer = make_user(app, "lena.officer", ["linkage_officer"])
    with app.app_context():
        for actor in (w.pi, officer):  # a researcher of the project; the officer who sees identifiers
            with pytest.raises(ExtractServiceError, match="permission"):
                svc.request_reidentification(actor, p.id, [token], PURPOSE)
    req = _approved(app, w, p.id, [token])
    with app.app_context():
        for actor in (w.pi, officer, w.chair):  # only the requester receives, and only once approved
            with pytest.raises(ExtractServiceError, match="No such request of yours"):
                svc.fulfil_reidentification(actor, req.id)
    with app.extensions["tre.db"].session_factory() as s:
        denied = list(s.scalars(select(AuditEvent).where(AuditEvent.outcome == "denied",
                                                         AuditEvent.action.like("reidentify.%"))))
    assert len([e for e in denied if e.action == "reidentify.request"]) == 2
    assert len([e for e in denied if e.action == "reidentify.fulfil"]) == 3


def test_token_of_another_project_or_another_purpose_finds_nobody(app: Any, generated: Any) -> None:  # noqa: F811
    w, p, run, social_tokens = _linked_extract(app, generated)
    record_id, _ = _numberless_person(app, generated, run.id)
    platform = app.extensions["tre.platform"]
    other = _active_project(app, w, publish=False)
    with app.app_context():
        extracts_service(platform).request(w.custodian, other.id)
    folder = app.extensions["tre.settings"].extracts_path / other.id / "social_care" / "data"
    other_token = pq.read_table(sorted(folder.glob("*.parquet"))).column("patient_token").to_pylist()[
        list(social_tokens).index(record_id)]
    assert other_token != social_tokens[record_id]  # the same person, another project's token

    # The same person's block under a key of the project made for another purpose (date shifting):
    # spelled like a token, but not one, so it must not reverse to the person.
    with app.extensions["tre.db"].session_factory() as s:
        block = bytes(s.scalar(select(PersonIndexEntry.person_pseudonym).where(
            PersonIndexEntry.run_id == run.id, PersonIndexEntry.record_id == record_id)))
        project_key = _key(s, platform.keys, _project_key_name(p.id), create=False)
        assert _key(s, platform.keys, LINKAGE, create=False)  # the index exists under the linkage key
    purposed = tokens.project_tokens(
        tokens.Pseudonyms(np.frombuffer(block, dtype=np.uint8).reshape(1, 16).copy(), np.zeros(1, dtype=np.int8)),
        tokens.derive_subkey(project_key, "date-shift"),
    )[0].as_py()

    req = _approved(app, w, p.id, [other_token, purposed])
    with app.app_context():
        answer = extracts_service(platform).fulfil_reidentification(w.custodian, req.id)
    assert len(answer) == 2
    for found in answer:
        assert found["nhs_number"] is None
        assert found["person_records"] == [] and found["person_index_run"] is None
    [event] = [e for e in _fulfil_events(app) if e.outcome != "denied"]
    assert event.detail == {"tokens": 2, "by_nhs_number": 0, "by_person_index": 0, "not_found": 2}
