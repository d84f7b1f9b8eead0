"""The hub's only way to the control plane: two JSON calls over HTTP, failing closed.

The hub and the workspaces run in other processes (and, at scale, other machines) than the
control plane, so this module is the whole contract between them. Every answer is validated here
before a plug-in acts on it: a malformed or missing answer is treated as a refusal, never as
permission.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Unicode, default
from traitlets.config import LoggingConfigurable

DEFAULT_CONTROL_PLANE_URL = "http://127.0.0.1:5000"

# Names the hub and the operating system will accept; anything else from the wire is refused.
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SERVER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
UNIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
# Only the TRE's own project groups: a gate answer naming 'sudo' or 'disk' must not reach usermod.
UNIX_GROUP_RE = re.compile(r"^tre-p-[a-z0-9-]{1,26}$")
# The gate may only add the project's own variables: never PATH, LD_PRELOAD or the hub's tokens.
ENV_NAME_RE = re.compile(r"^TRE_[A-Z0-9_]{1,60}$")


class WorkspaceRefused(web.HTTPError):
    """A refusal the researcher should read as it is (JupyterHub shows ``jupyterhub_message``)."""

    def __init__(self, message: str, status_code: int = 403) -> None:
        super().__init__(status_code, log_message=message, reason="Forbidden" if status_code == 403 else None)
        self.jupyterhub_message = message


class ControlPlaneUnavailable(WorkspaceRefused):
    """The control plane could not be asked: fail closed with a message that says so."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "The workspace service cannot reach the TRE control plane right now, so it cannot check your "
            f"access. Nothing was started. Please try again in a minute. ({detail})",
            status_code=503,
        )


_HUB_SLUG = re.compile(r"^[a-z](?:[a-z0-9]|-(?!-)){0,28}[a-z0-9]$|^[a-z]$")


def expected_server_name(project_id: str) -> str:
    """The hub server name for a project, by the contract with the control plane. JupyterHub wants
    1-30 characters of [a-z0-9-] starting with a letter: an id that already is one is used as it
    is; any other becomes "p" and its first 29 characters."""
    lowered = project_id.lower()
    return lowered if _HUB_SLUG.match(lowered) else "p" + lowered[:29]


@dataclass(frozen=True)
class Redemption:
    """Who a single-use login token was issued to, and which project workspace they asked for."""

    username: str
    user_id: str
    project_id: str
    server_name: str


@dataclass(frozen=True)
class SpawnGrant:
    """What the access gate allows one workspace start to have."""

    project_id: str
    extract_path: str
    outputs_path: str
    unix_user: str
    env: dict[str, str] = field(default_factory=dict)
    # The group that may read the extract, as the control plane named it (empty: the hub derives it).
    unix_group: str = ""


class ControlPlane(LoggingConfigurable):
    """Client of the control plane's hub API (configure as ``c.ControlPlane.url`` and friends)."""

    url = Unicode(help="Base URL of the control plane (env TRE_CONTROL_PLANE_URL).").tag(config=True)
    service_token_file = Unicode(
        help="File holding the hub's service secret for the control plane (env TRE_HUB_SERVICE_TOKEN_FILE)."
    ).tag(config=True)
    timeout = Float(10.0, help="Seconds to wait for the control plane before refusing.").tag(config=True)

    @default("url")
    def _default_url(self) -> str:
        return os.environ.get("TRE_CONTROL_PLANE_URL", DEFAULT_CONTROL_PLANE_URL)

    @default("service_token_file")
    def _default_token_file(self) -> str:
        return os.environ.get("TRE_HUB_SERVICE_TOKEN_FILE", "")

    def _secret(self) -> str:
        """Read the secret on every call so it can be rotated without restarting the hub."""
        if not self.service_token_file:
            raise ControlPlaneUnavailable("no service token file is configured")
        try:
            secret = Path(self.service_token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ControlPlaneUnavailable(f"cannot read the service token file: {exc.strerror}") from None
        if not secret:
            raise ControlPlaneUnavailable("the service token file is empty")
        return secret

    async def _post(self, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = HTTPRequest(
            self.url.rstrip("/") + path,
            method="POST",
            body=json.dumps(payload),
            headers={
                "Authorization": f"Bearer {self._secret()}",
                "Content-Type": "application/json",
                "Accept": "application/json, application/problem+json",
            },
            request_timeout=self.timeout,
            connect_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            raise ControlPlaneUnavailable(type(exc).__name__) from None
        if response.code == 599 or response.code >= 500:
            raise ControlPlaneUnavailable(f"HTTP {response.code}")
        try:
            body = json.loads(response.body or b"{}")
        except ValueError:
            raise ControlPlaneUnavailable(f"HTTP {response.code} with a body that is not JSON") from None
        if not isinstance(body, dict):
            raise ControlPlaneUnavailable("an answer that is not a JSON object")
        return response.code, body

    async def redeem(self, token: str) -> Redemption:
        """Exchange a single-use login token; the control plane checks signature, audience, expiry, jti."""
        status, body = await self._post("/api/v1/hub/redeem", {"token": token})
        if status != 200:
            raise WorkspaceRefused(_problem_text(body, "This workspace link is not valid."), status_code=403)
        try:
            redemption = Redemption(
                username=_text(body, "username"),
                user_id=_text(body, "user_id"),
                project_id=_text(body, "project_id"),
                server_name=_text(body, "server_name"),
            )
        except ValueError as exc:
            raise ControlPlaneUnavailable(f"malformed redeem answer: {exc}") from None
        if not USERNAME_RE.match(redemption.username) or not SERVER_NAME_RE.match(redemption.server_name):
            raise ControlPlaneUnavailable("the redeem answer names a user or server the hub cannot use")
        return redemption

    async def authorise_spawn(self, username: str, server_name: str) -> SpawnGrant:
        """Ask the access gate whether this workspace may start now; refuse unless it says yes."""
        status, body = await self._post(
            "/api/v1/hub/authorise-spawn", {"username": username, "server_name": server_name}
        )
        if status != 200 or body.get("allowed") is not True:
            reason = body.get("reason") if isinstance(body.get("reason"), str) else None
            raise WorkspaceRefused(
                "You cannot open this workspace now: "
                + (reason or _problem_text(body, "the TRE access gate refused it."))
            )
        try:
            grant = SpawnGrant(
                project_id=_text(body, "project_id"),
                extract_path=_text(body, "extract_path"),
                outputs_path=_text(body, "outputs_path"),
                unix_user=_text(body, "unix_user"),
                env=_project_env(body.get("env")),
                unix_group=body.get("unix_group") or "",
            )
        except ValueError as exc:
            raise ControlPlaneUnavailable(f"malformed gate answer: {exc}") from None
        for path in (grant.extract_path, grant.outputs_path):
            if not os.path.isabs(path) or os.path.normpath(path) != path:
                raise ControlPlaneUnavailable("the gate answer holds a path that is not absolute and normal")
        if not UNIX_USER_RE.match(grant.unix_user):
            raise ControlPlaneUnavailable("the gate answer names an invalid unix account")
        if grant.unix_group and (not isinstance(grant.unix_group, str) or not UNIX_GROUP_RE.match(grant.unix_group)):
            raise ControlPlaneUnavailable("the gate answer names a unix group that is not a TRE project group")
        return grant


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} missing or not a string")
    return value


def _project_env(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("'env' is not an object")
    env: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not ENV_NAME_RE.match(name) or not isinstance(value, str):
            raise ValueError(f"env variable {str(name)[:40]!r} is not allowed")
        env[name] = value
    return env


def _problem_text(body: dict[str, Any], fallback: str) -> str:
    """Turn a problem+json body into one sentence for the researcher."""
    parts = [body.get(key) for key in ("title", "detail")]
    text = " ".join(part.strip() for part in parts if isinstance(part, str) and part.strip())
    return text[:500] if text else fallback
