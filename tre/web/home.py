"""The home page: a sign-in invitation for visitors, and for a signed-in person one section per role
with what waits for them and for how long (reads through ``tre.worklist``)."""

from __future__ import annotations

import datetime as dt

from flask import g, render_template

from disclosure import rules as output_rules
from projects import rules as project_rules
from projects.rules import ProjectPolicy
from tre import worklist
from tre.authn import platform
from tre.core.db import utcnow
from tre.core.permissions import ROLE_LABELS, Role


def waited(since: dt.datetime | None, now: dt.datetime) -> str:
    """How long something has waited, in words a person reads at a glance."""
    if since is None:
        return ""
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 3600:
        minutes = seconds // 60
        return "under a minute" if minutes == 0 else f"{minutes} minute{'s' if minutes != 1 else ''}"
    if seconds < 2 * 86400:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{seconds // 86400} days"


def render_home() -> str:
    user = g.get("user")
    if user is None:
        return render_template("home.html", title="Home", work=None)
    p = platform()
    now = utcnow()
    work = worklist.for_person(p.db.session, user, now=now, quorum=ProjectPolicy.from_settings(p.settings).quorum)
    role_names = {r.value: label for r, label in ROLE_LABELS.items()}
    roles = [role_names[name] for name in sorted(user.role_names) if name in {r.value for r in Role}]
    return render_template(
        "home.html",
        title="Your tasks",
        work=work,
        roles=roles,
        project_labels=project_rules.STATE_LABELS,
        output_labels=output_rules.STATE_LABELS,
        waited=lambda since: waited(since, now),
    )
