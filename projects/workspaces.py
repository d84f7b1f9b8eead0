"""The control plane's side of JupyterHub workspaces ("safe settings").

A researcher opens a workspace from the project page: the gate is asked, and a short-lived,
single-use login token bound to the hub's audience is minted. The hub redeems it here (asking
the gate again) and, before *every* start of a server, asks ``authorise_spawn``, which answers
with the read-only extract folder, the private outputs folder, the separate unix account for this
(person, project), and a token that lets the workspace submit outputs for that project only.
When the gate closes, ``workspaces_to_stop`` lists the running servers the hub must stop.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, Index, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from projects.gate import AccessRefused, check_access, require_access
from projects.models import Project
from tre.core.audit import DENIED, AuditLog
from tre.core.db import Base, new_id, transaction, utcnow
from tre.core.filemodes import project_group_name, share_read_only_with_group
from tre.core.identity import User
from tre.core.tokens import InvalidToken, TokenService

HUB_AUDIENCE = "jupyterhub"
LOGIN_PURPOSE = "hub-login"
OUTPUT_AUDIENCE = "tre-api"
OUTPUT_PURPOSE = "output-submit"
LOGIN_TOKEN_LIFETIME = dt.timedelta(minutes=2)
OUTPUT_TOKEN_LIFETIME = dt.timedelta(hours=12)


class WorkspaceError(Exception):
    """A workspace request that cannot be granted; the message is safe to show."""


class WorkspaceSession(Base):
    """A workspace server the hub was allowed to start, until it is known to be stopped."""

    __tablename__ = "workspace_sessions"
    __table_args__ = (Index("ix_workspace_sessions_open", "stopped_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    hub_username: Mapped[str] = mapped_column(String(64))
    server_name: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[dt.datetime | None]
    stop_reason: Mapped[str | None] = mapped_column(String(200))


def hub_username(user_id: str) -> str:
    return f"u-{user_id}"


def user_id_of(username: str) -> str | None:
    return username[2:] if username.startswith("u-") and len(username) > 2 else None


_HUB_SLUG = re.compile(r"^[a-z](?:[a-z0-9]|-(?!-)){0,28}[a-z0-9]$|^[a-z]$")


def server_name(project_id: str) -> str:
    """JupyterHub names servers with 1-30 characters of [a-z0-9-] starting with a letter: an id that
    already is one is used as it is, any other becomes "p" + its first 29 characters. The hub side
    applies the same rule (``jupyter.controlplane.expected_server_name``)."""
    lowered = project_id.lower()
    return lowered if _HUB_SLUG.match(lowered) else "p" + lowered[:29]


def project_for_server(session: Session, server: str) -> Project | None:
    """The project a server name stands for; none if the name matches no project, or several."""
    exact = session.scalars(select(Project).where(Project.id == server)).all()
    if exact and server_name(exact[0].id) == server:
        return exact[0]
    if not server.startswith("p") or len(server) < 9:
        return None
    matches = [p for p in session.scalars(select(Project).where(Project.id.startswith(server[1:], autoescape=True)))
               if server_name(p.id) == server]
    return matches[0] if len(matches) == 1 else None


def unix_user(user_id: str, project_id: str) -> str:
    """One unix account per (person, project), so no workspace can read another project's files."""
    return "tw" + hashlib.sha256(f"{user_id}:{project_id}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WorkspacePaths:
    extracts_root: Path
    workspaces_root: Path

    def extract_dir(self, project_id: str) -> Path:
        return self.extracts_root / project_id

    def outputs_dir(self, project_id: str, user_id: str) -> Path:
        return self.workspaces_root / project_id / unix_user(user_id, project_id) / "outputs"

    def prepare(self, project_id: str, user_id: str) -> None:
        """Create the folders a workspace needs. Parents are 0711: passable, not listable; the extract
        goes to the project's group when it exists (read-only, tre/core/filemodes.py), and the spawner
        gives the outputs to the workspace."""
        for root in (self.extracts_root, self.workspaces_root):
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o711)
        extract = self.extract_dir(project_id)
        extract.mkdir(exist_ok=True)
        share_read_only_with_group(extract, project_id)
        outputs = self.outputs_dir(project_id, user_id)
        for folder in (outputs.parent.parent, outputs.parent):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o711)
        outputs.mkdir(exist_ok=True)
        outputs.chmod(0o700)


@dataclass
class Workspaces:
    session: Session
    audit: AuditLog
    tokens: TokenService
    paths: WorkspacePaths
    output_api_url: str
    request_id: str | None = None

    def issue_login_token(self, user: User, project_id: str) -> str:
        """The "Open workspace" button: gate first, then a two-minute single-use token for the hub."""
        try:
            require_access(self.session, self.audit, user.id, project_id, purpose="workspace-open",
                           request_id=self.request_id)
        except AccessRefused as refused:
            raise WorkspaceError(str(refused)) from None
        token = self.tokens.issue(
            user.id, HUB_AUDIENCE, LOGIN_PURPOSE, LOGIN_TOKEN_LIFETIME, project_id=project_id, single_use=True
        )
        with transaction(self.session) as s:
            self.audit.record(s, "workspace.open", actor_id=user.id, target_type="project", target_id=project_id,
                              project_id=project_id, request_id=self.request_id)
        return token

    def redeem(self, token: str) -> dict[str, str]:
        """The hub exchanges a login token: verified, spent once, and the gate asked again."""
        try:
            claims = self.tokens.verify(token, audience=HUB_AUDIENCE, purpose=LOGIN_PURPOSE)
        except InvalidToken as refused:
            with transaction(self.session) as s:
                self.audit.record(s, "workspace.login", actor_id=None, outcome=DENIED, request_id=self.request_id,
                                  detail={"reason": str(refused.reason)})
            raise WorkspaceError("This workspace link is not valid or has already been used. "
                                 "Open the workspace again from your project page.") from None
        project_id = claims.project_id or ""
        try:
            require_access(self.session, self.audit, claims.subject, project_id, purpose="workspace-login",
                           request_id=self.request_id)
        except AccessRefused as refused:
            raise WorkspaceError(str(refused)) from None
        return {
            "username": hub_username(claims.subject),
            "user_id": claims.subject,
            "project_id": project_id,
            "server_name": server_name(project_id),
        }

    def authorise_spawn(self, username: str, server: str) -> dict[str, Any]:
        """Asked by the spawner before every start, including starts through the hub's own API."""
        user_id = user_id_of(username)
        project = project_for_server(self.session, server) if server else None
        if user_id is None or project is None:
            with transaction(self.session) as s:
                self.audit.record(s, "workspace.spawn", actor_id=user_id, outcome=DENIED, request_id=self.request_id,
                                  detail={"reason": "unknown user or project"})
            return {"allowed": False, "reason": "There is no such project workspace."}
        try:
            require_access(self.session, self.audit, user_id, project.id, purpose="workspace-spawn",
                           request_id=self.request_id)
        except AccessRefused as refused:
            return {"allowed": False, "reason": "; ".join(refused.decision.messages)}
        self.paths.prepare(project.id, user_id)
        output_token = self.tokens.issue(
            user_id, OUTPUT_AUDIENCE, OUTPUT_PURPOSE, OUTPUT_TOKEN_LIFETIME, project_id=project.id
        )
        with transaction(self.session) as s:
            s.add(WorkspaceSession(user_id=user_id, project_id=project.id, hub_username=username, server_name=server))
            self.audit.record(s, "workspace.spawn", actor_id=user_id, target_type="project", target_id=project.id,
                              project_id=project.id, request_id=self.request_id)
        return {
            "allowed": True,
            "project_id": project.id,
            "extract_path": str(self.paths.extract_dir(project.id)),
            "outputs_path": str(self.paths.outputs_dir(project.id, user_id)),
            "unix_user": unix_user(user_id, project.id),
            # The group that may read the extract (tre/core/filemodes.py): the hub makes the
            # workspace account a member of it.
            "unix_group": project_group_name(project.id),
            "env": {
                "TRE_PROJECT_ID": project.id,
                # Shown in JupyterLab's top bar as the link back to the project page.
                "TRE_PROJECT_NAME": project.title,
                "TRE_OUTPUT_TOKEN": output_token,
                "TRE_OUTPUT_API": self.output_api_url,
            },
        }

    def workspaces_to_stop(self) -> list[WorkspaceSession]:
        """Open workspace sessions whose person may no longer touch the project's data."""
        stale = []
        for ws in self.session.scalars(select(WorkspaceSession).where(WorkspaceSession.stopped_at.is_(None))):
            decision = check_access(self.session, ws.user_id, ws.project_id)
            if not decision.allowed:
                stale.append(ws)
        return stale

    def record_stopped(self, ws_id: str, reason: str) -> None:
        with transaction(self.session) as s:
            ws = s.get(WorkspaceSession, ws_id)
            if ws is None or ws.stopped_at is not None:
                return
            ws.stopped_at = utcnow()
            ws.stop_reason = reason[:200]
            self.audit.record(s, "workspace.stop", actor_id=None, target_type="workspace", target_id=ws.id,
                              project_id=ws.project_id, request_id=self.request_id, detail={"reason": reason[:200]})
