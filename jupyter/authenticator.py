"""Log researchers into the hub only with a single-use token issued by the control plane.

The control plane's "Open workspace" button POSTs the token to ``/hub/tre-login`` (never in a URL, so it
is not kept in histories or proxy logs). The hub has no passwords and no login page of its own: every
login is a fresh decision of the control plane's access gate.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

from jupyterhub.auth import Authenticator
from jupyterhub.handlers import BaseHandler
from jupyterhub.utils import url_path_join
from tornado import web
from traitlets import Bool, Instance, List, Unicode, default

from jupyter.controlplane import ControlPlane, Redemption, WorkspaceRefused

LOGIN_PATH = "/tre-login"
REDEMPTION_ATTR = "_tre_redemption"


class TreLoginHandler(BaseHandler):
    """Redeem a token, replace any existing hub session, and send the browser to the project's server."""

    def check_xsrf_cookie(self) -> None:
        """The control plane's form is cross-site by design; the origin check below stands in for xsrf.

        The token itself is single-use, short-lived and audience-bound, so a replayed form is useless;
        the origin check stops a third-party page from logging a victim into someone else's workspace.
        """
        origin = self.request.headers.get("Origin")
        if origin is not None and origin not in self.authenticator.allowed_login_origins():
            raise web.HTTPError(403, "Workspaces can only be opened from the TRE control plane.")

    async def get(self) -> None:
        """Nobody arrives here by link: say where workspaces are opened from."""
        self.set_status(405)
        self.set_header("Allow", "POST")
        self.finish(await self._page("Open your workspace from the project page of the TRE control plane."))

    async def post(self) -> None:
        token = self.get_body_argument("token", default="").strip()
        # Whatever happens next, the browser's previous hub identity is gone: a stale cookie of one
        # researcher must never carry another into the wrong workspace.
        self._forget_previous_user()
        if not token:
            raise web.HTTPError(400, "The workspace link carried no token.")
        try:
            user = await self.login_user({"token": token})
        except WorkspaceRefused as refused:
            self.set_status(refused.status_code)
            self.finish(await self._page(refused.jupyterhub_message))
            return
        if user is None:
            self.set_status(403)
            self.finish(
                await self._page("This workspace link is not valid. Open it again from the project page.")
            )
            return
        # The hub sets its login cookie only when the request's cookie names someone else; the one this
        # request carried (the same person opening again) was cleared above, so set it in every case.
        self.set_hub_cookie(user)
        # A new session id too, so nothing bound to the old session follows the new user.
        self.set_session_cookie()
        redemption: Redemption = getattr(self, REDEMPTION_ATTR)
        target = url_path_join(
            self.hub.base_url, "spawn", quote(user.name, safe=""), quote(redemption.server_name, safe="")
        )
        self.redirect(target)

    def _forget_previous_user(self) -> None:
        """Drop the hub session and the previous user's workspace cookies (and the tokens behind them).

        ``clear_login_cookie`` deletes the previous user's tokens bound to this browser session; the
        workspace cookies live on other paths, so they are cleared here by name and path.
        """
        previous = self.get_current_user_cookie()
        if previous is not None:
            for server_name, orm_spawner in previous.orm_user.orm_spawners.items():
                cookie = orm_spawner.oauth_client_id or f"jupyterhub-user-{quote(previous.name)}" + (
                    f"-{quote(server_name)}" if server_name else ""
                )
                self.clear_cookie(cookie, path=previous.server_url(server_name))
        self.clear_login_cookie()

    async def _page(self, message: str) -> str:
        """The hub's own error page (autoescaped), so refusals look like the rest of the hub."""
        return await self.render_template(
            "error.html", status_code=self.get_status(), status_message=self._reason, message=message
        )


class NoTokenPageHandler(BaseHandler):
    """``/hub/token``: researchers hold no hub API tokens (their role lacks the scope), so no page."""

    async def get(self) -> None:
        self.set_status(404)
        self.finish(
            await self.render_template(
                "error.html",
                status_code=404,
                status_message="Not Found",
                message="Workspaces do not issue API tokens. Open your workspace from the project page.",
            )
        )


class TreAuthenticator(Authenticator):
    """An authenticator whose only credential is a control-plane token (``c.TreAuthenticator``)."""

    control_plane = Instance(ControlPlane)
    login_origins = List(
        Unicode(),
        help="Origins allowed to POST the login form; defaults to the control plane's own origin.",
    ).tag(config=True)
    auto_login = Bool(True)

    @default("control_plane")
    def _default_control_plane(self) -> ControlPlane:
        return ControlPlane(parent=self)

    @default("allow_all")
    def _default_allow_all(self) -> bool:
        # Who may log in is the control plane's decision, made when it redeems the token.
        return True

    def allowed_login_origins(self) -> set[str]:
        if self.login_origins:
            return set(self.login_origins)
        parts = urlsplit(self.control_plane.url)
        return {f"{parts.scheme}://{parts.netloc}"}

    def login_url(self, base_url: str) -> str:
        """The hub's own login page would only confuse: point at the handler that explains."""
        return url_path_join(base_url, LOGIN_PATH)

    def get_handlers(self, app: Any) -> list[tuple[str, type]]:
        # Ahead of the hub's own handlers, so /hub/token is ours: researchers get no token page.
        return [(LOGIN_PATH, TreLoginHandler), (r"/token", NoTokenPageHandler)]

    async def authenticate(self, handler: Any, data: dict[str, Any] | None) -> dict[str, Any] | None:
        token = (data or {}).get("token")
        if not isinstance(token, str) or not token:
            return None
        redemption = await self.control_plane.redeem(token)
        setattr(handler, REDEMPTION_ATTR, redemption)
        # Never admin through this door, whatever the hub's database says.
        return {"name": redemption.username, "admin": False}
