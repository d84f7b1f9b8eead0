"""The output queue's use cases, one transaction each, put together as one service (``Outputs``).

Every public method checks permission and policy, changes state, records its audit event and any
notification in the same transaction, and commits — or raises an ``OutputError`` whose message is
safe to show, having changed nothing (a refusal is itself recorded, in its own small transaction).

The use cases live by who uses them: ``disclosure.authoring`` (the author), ``disclosure.reviewing``
(the checkers), ``disclosure.releasing`` (content leaving: release, download, revoke, viewing a file)
and ``disclosure.queries`` (reading); their shared plumbing is ``disclosure.kernel``, the automated
checks' progress ``disclosure.progress``, the release ledger ``disclosure.ledger``. The names callers
import from here stay here.
"""

from __future__ import annotations

from disclosure import closure as _closure  # noqa: F401  (registers the data-destruction hook)
from disclosure.authoring import Authoring
from disclosure.closure import destroy_unreleased_outputs
from disclosure.kernel import (
    DEFAULT_GROUP,
    IncompleteRequest,
    NotFound,
    OutputError,
    OutputPermissionDenied,
    OutputsBase,
)
from disclosure.ledger import load_ledger, record_in_ledger
from disclosure.progress import (
    CHECK_JOB,
    AutomatedStatus,
    _checks_by_file,
    advance_after_checks,
    automated_status,
    automated_statuses,
    check_job_key,
    current_policy,
)
from disclosure.queries import Queries, QueueEntry, ReviewPicture
from disclosure.releasing import Releasing
from disclosure.reviewing import Reviewing
from tre.core.jobs import SUCCEEDED


class Outputs(Authoring, Reviewing, Releasing, Queries):
    """Every use case of the output queue on one object (see the modules above for each)."""


__all__ = [
    "CHECK_JOB",
    "DEFAULT_GROUP",
    "SUCCEEDED",
    "AutomatedStatus",
    "IncompleteRequest",
    "NotFound",
    "OutputError",
    "OutputPermissionDenied",
    "Outputs",
    "OutputsBase",
    "QueueEntry",
    "ReviewPicture",
    "_checks_by_file",
    "advance_after_checks",
    "automated_status",
    "automated_statuses",
    "check_job_key",
    "current_policy",
    "destroy_unreleased_outputs",
    "load_ledger",
    "record_in_ledger",
]
