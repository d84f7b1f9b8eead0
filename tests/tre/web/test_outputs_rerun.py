"""The request page shows what the re-run found: the checker sees each file's outcome with its
difference and a failed re-run's reason and log; the author's team sees outcomes only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import update

from disclosure.models import OutputRequest, OutputRerun
from tests.disclosure.factories import SAFE_CSV, World
from tre.core.db import transaction, utcnow

NOTEBOOK = json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}).encode()


@pytest.fixture
def world(app: Any) -> Any:
    with app.app_context():
        yield World(app)


def page(world: World, user: Any, request_id: str) -> str:
    client = world.app.test_client()
    world.session.rollback()
    with client.session_transaction() as sess:
        now = int(utcnow().timestamp())
        sess.update({"uid": user.id, "epoch": user.session_epoch, "seen": now, "signed_in": now})
    response = client.get(f"/outputs/requests/{request_id}")
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def sent_with_code(world: World, **rerun: Any) -> str:
    req, _ = world.svc.submit_from_workspace(
        world.author,
        world.project.id,
        "Table 1",
        client_key=None,
        groups=[("outputs", "Admissions", "Suppressed under 10")],
        files=[("table.csv", SAFE_CSV, "outputs", None)],
        code=("analysis.ipynb", NOTEBOOK, None),
    )
    file_id = world.session.get(OutputRequest, req.id).current_files[0].id
    values = {key: (value(file_id) if callable(value) else value) for key, value in rerun.items()}
    with transaction(world.session) as s:
        s.execute(update(OutputRerun).where(OutputRerun.request_id == req.id).values(finished_at=utcnow(), **values))
    world.svc.claim(world.olive, req.id)
    return req.id


def test_the_checker_sees_how_a_file_differs_and_the_team_only_that_it_does(world: World) -> None:
    difference = "1 cell(s) differ beyond the tolerance; the largest numeric difference is 7"
    request_id = sent_with_code(
        world,
        state="done",
        files=lambda fid: {fid: {"name": "table.csv", "outcome": "differs", "difference": difference}},
    )

    checker = page(world, world.olive, request_id)
    team = page(world, world.author, request_id)

    assert 'data-outcome="differs"' in checker and difference in checker
    assert 'data-outcome="differs"' in team and difference not in team


def test_a_failed_re_run_shows_its_reason_to_the_checker_and_not_its_log_to_the_team(world: World) -> None:
    reason = "the code tried to use the network (URLError in cell 2): a re-run has no network at all"
    request_id = sent_with_code(world, state="failed", reason=reason, log=["status: failed", "error: URLError"])

    checker = page(world, world.olive, request_id)
    team = page(world, world.author, request_id)

    assert reason in checker and "error: URLError" in checker
    assert "could not re-run" in team and reason not in team and "error: URLError" not in team
