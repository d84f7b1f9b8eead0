"""Every module that defines tables, imported together so the metadata is whole.

Alembic's environment and the tests import this; add a module here when it gains tables.
"""

from __future__ import annotations

import disclosure.checks  # noqa: F401  (registers the output check job handler)
import disclosure.models  # noqa: F401
import disclosure.rerun.jobs  # noqa: F401  (registers the re-run job handler)
import projects.models  # noqa: F401
import projects.tasks  # noqa: F401  (registers the projects' job handlers)
import projects.workspaces  # noqa: F401
import pseudonymisation.delivery_tasks  # noqa: F401  (registers the delivery check job)
import pseudonymisation.models  # noqa: F401
import pseudonymisation.person_index_models  # noqa: F401
import pseudonymisation.tasks  # noqa: F401  (registers the extract job and the closure hook)
from tre.core import (  # noqa: F401
    audit,
    identity,
    jobs,
    notifications,  # noqa: F401
    roles,  # noqa: F401
)
from tre.core.db import Base

metadata = Base.metadata
