"""API fuzzing with schemathesis against the app's own OpenAPI document (``/api/openapi.json``).

Every operation is called in process (WSGI, no server) with examples generated from its schema,
twice: with a personal API token of a person holding every role (so the handlers run, not only the
access check), and without any credentials. Checks:

- never a server error (``not_a_server_error``);
- an answer the document describes matches its schema (``response_schema_conformance``);
- authentication is not ignored: without credentials every operation that declares security
  answers 401, and schemathesis' ``ignored_auth`` re-sends authenticated examples without the token.

The number of examples is bounded (``TRE_FUZZ_EXAMPLES``, default 8 per operation and mode) so the
test stays around a minute on two cores; the figure is printed at the end of the run.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth, response_schema_conformance

from tests.projects.factories import build_world, make_user, ready_for_access
from tests.security.figures import record
from tre.core import jobs
from tre.core.identity import Identity

EXAMPLES = int(os.environ.get("TRE_FUZZ_EXAMPLES", "8"))
EVERY_ROLE = ["researcher", "dac_member", "dac_chair", "output_checker", "data_custodian", "administrator", "auditor"]
# JupyterHub's routes take the hub's service secret, not a person's token; they are fuzzed without it
# (so they must refuse) but ignored_auth does not apply to them.
HUB_OPERATIONS = {"/api/v1/hub/redeem", "/api/v1/hub/authorise-spawn"}


@pytest.fixture
def fuzz_target(sqlite_app: Any) -> tuple[Any, str]:
    jobs.set_dispatcher(None)  # generated requests may queue work; nothing runs behind the test's back
    w = build_world(sqlite_app)
    ready_for_access(w)
    everyone = make_user(sqlite_app, "fuzz.everyone", EVERY_ROLE)
    p = sqlite_app.extensions["tre.platform"]
    _, token = Identity(p.db.session, p.keys, p.audit).create_personal_token(everyone, "fuzz", 30)
    return sqlite_app, token


def _secured(operation: Any) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("security")) and operation.path not in HUB_OPERATIONS


def test_api_survives_fuzzing_with_and_without_a_token(fuzz_target: tuple[Any, str]) -> None:
    app, token = fuzz_target
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40  # the whole API, not an empty document
    examples = {"authenticated": 0, "anonymous": 0}
    failures: list[str] = []
    statuses: dict[int, int] = {}

    for operation in operations:
        for mode in ("authenticated", "anonymous"):
            try:
                _fuzz(operation, mode, token, examples, statuses)
            except Exception as exc:  # one line per operation, then fail once with all of them
                failures.append(f"{operation.label} ({mode}): {type(exc).__name__}: {str(exc)[:600]}")

    total = examples["authenticated"] + examples["anonymous"]
    record("API fuzz examples (schemathesis)", total)
    record("API operations fuzzed", len(operations))
    print(f"schemathesis: {len(operations)} operations, {examples} examples, authenticated answers {statuses}")
    # The token really opened the handlers: most authenticated answers are not refusals.
    assert sum(n for code, n in statuses.items() if code not in (401, 403)) > examples["authenticated"] // 2
    assert not failures, "\n\n".join(failures)



def _fuzz(operation: Any, mode: str, token: str, examples: dict[str, int], statuses: dict[int, int]) -> None:
    secured = _secured(operation)
    hub = operation.path in HUB_OPERATIONS

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        examples[mode] += 1
        if mode == "authenticated":
            checks = [not_a_server_error, response_schema_conformance] + ([ignored_auth] if secured else [])
            response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=checks)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            return
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        response = case.call_and_validate(checks=[not_a_server_error])
        if secured or hub:
            assert response.status_code == 401, f"{case.method} {case.formatted_path}: {response.status_code}"

    run()
