"""Every module that defines tables, imported together so the metadata is whole.

Alembic's environment and the tests import this; add a module here when it gains tables.
"""

from __future__ import annotations

from tre.core.db import Base
from tre.core import audit, identity, jobs  # noqa: F401
import projects.models  # noqa: F401
import projects.tasks  # noqa: F401  (registers the projects' job handlers)
from tre.core import notifications  # noqa: F401

metadata = Base.metadata
