"""Inside the workspace's Jupyter server: close the browser's download paths around the output queue.

Loaded only in the workspace runtime (it needs ``jupyter_server``, which the hub does not have). The
decision, in docs/workspaces.md: a researcher's browser may *view* the work (notebooks, their plots
and tables, small text files) but may not *download* files. So ``/files/`` and ``/nbconvert/`` answer
403; the contents API never hands out (nor copies) a file that lies in the extract, whatever path or
symlink names it, never a binary file other than an image (a copied Parquet file would otherwise
leave whole), and nothing larger than ``max_view_bytes``; JupyterLab's download commands are
switched off (page_config.json, written by the runtime builder). Results leave only through
``tre-submit`` and the output checkers.

It also serves ``POST tre/output-requests``, which JupyterLab's "Submit for output checking…" entry
(jupyter/labextension) calls: the browser names files in the home, and this server submits them with
:func:`jupyter.client.submit`, as ``tre-submit`` does, so the output token never reaches the browser.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web
from traitlets import Integer, List, Unicode

from jupyter.client import MAX_FILE_BYTES, SubmitError, request_status, resubmit, submit

REFUSAL = (
    "Downloading files from a TRE workspace is switched off. Request release of outputs with "
    "tre-submit (or jupyter.client.submit): output checkers review them before they leave."
)


class GuardedContentsManager(AsyncLargeFileManager):
    """The default contents manager, minus serving extract files, binary files or large files."""

    protected_dirs = List(Unicode(), ["extract"], help="Folders (in the home) never served.").tag(config=True)
    max_view_bytes = Integer(2 * 1024 * 1024, help="Largest file the browser may open.").tag(config=True)

    async def get(self, path: str, content: bool = True, type: Any = None, format: Any = None, **kwargs: Any):
        if content and type != "directory":
            os_path = self._get_os_path(path)
            if os.path.isfile(os_path):
                self._check_may_view(path, os_path)
        model = await super().get(path, content=content, type=type, format=format, **kwargs)
        if content and model.get("type") == "file" and model.get("format") == "base64":
            if not str(model.get("mimetype") or "").startswith("image/"):
                raise web.HTTPError(403, f"Binary files are not opened in the browser. {REFUSAL}")
        return model

    async def copy(self, from_path: str, to_path: str | None = None) -> Any:
        if self._in_protected(from_path, self._get_os_path(from_path.strip("/"))):
            raise web.HTTPError(403, "The extract is read in a notebook; it is not copied.")
        return await super().copy(from_path, to_path)

    def _protected_roots(self) -> list[str]:
        """Where the extract really is: the home's links and ``TRE_EXTRACT_DIR``, symlinks resolved."""
        roots = [os.path.realpath(os.path.join(self.root_dir, name)) for name in self.protected_dirs]
        if os.environ.get("TRE_EXTRACT_DIR"):
            roots.append(os.path.realpath(os.environ["TRE_EXTRACT_DIR"]))
        return roots

    def _in_protected(self, path: str, os_path: str) -> bool:
        if path.strip("/").split("/", 1)[0] in self.protected_dirs:
            return True
        real = os.path.realpath(os_path)
        return any(real == root or real.startswith(root + os.sep) for root in self._protected_roots())

    def _check_may_view(self, path: str, os_path: str) -> None:
        # Resolved, so a symlink the researcher made in the home (``ln -s extract/x.parquet x``) is
        # refused like the extract's own path.
        if self._in_protected(path, os_path):
            raise web.HTTPError(403, "Files of the extract are read in a notebook, not opened in the browser.")
        if os.path.getsize(os_path) > self.max_view_bytes:
            raise web.HTTPError(403, f"This file is too large to open in the browser. {REFUSAL}")


class NoDownloadHandler(web.RequestHandler):
    """Answer every download route with a refusal that says where outputs go instead.

    Deliberately not a JupyterHandler: there is nothing to authenticate before saying no.
    """

    def prepare(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(REFUSAL)


class OutputRequestHandler(APIHandler):
    """Submit files of the workspace home for output checking, on behalf of the signed-in browser.

    jupyter_server authenticates the request and checks its XSRF token (a POST with cookies and no
    ``X-XSRFToken`` is refused before this runs). Paths are the contents API's, relative to the home;
    anything that resolves outside the home (and ``TRE_OUTPUTS_DIR``) or into the extract is refused,
    whatever symlink names it.
    """

    auth_resource = "contents"
    MAX_FILES = 50

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.get_json_body()
        if not isinstance(body, dict):
            raise web.HTTPError(400, "Send a JSON object with paths, context and controls.")
        title, context, controls = (_text(body, name) for name in ("title", "context", "controls"))
        returned = _text(body, "resubmit")  # a request returned for changes: replace its files, resubmit
        replace, group = _text(body, "replace"), _text(body, "group")  # with resubmit: the file a path replaces
        paths = body.get("paths")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            raise web.HTTPError(400, "Select at least one file to submit.")
        if len(paths) > self.MAX_FILES:
            raise web.HTTPError(400, f"Submit at most {self.MAX_FILES} files in one request.")
        if not context and not returned:
            raise web.HTTPError(400, "Describe what the outputs are (context) before submitting.")
        if not controls and not returned:
            raise web.HTTPError(400, "Describe the disclosure controls applied (controls) before submitting.")
        files = [self._file_in_home(path) for path in paths]
        # The notebook the researcher submitted from (JupyterLab sends the one open): the queue re-runs it.
        code_path = _text(body, "code")
        code = self._file_in_home(code_path) if code_path else None
        try:
            # urllib blocks: off the event loop, so the workspace stays responsive while the queue answers.
            if returned:
                answer = await asyncio.to_thread(
                    resubmit,
                    returned,
                    files,
                    context=context or None,
                    controls=controls or None,
                    code=code,
                    **_replacing(replace, group, files),
                )
            else:
                answer = await asyncio.to_thread(submit, files, context, controls, title=title or None, code=code)
        except SubmitError as error:
            raise web.HTTPError(502, str(error)) from None
        self.log.info("TRE output request %s submitted with %d file(s)", answer.get("id"), len(files))
        self.set_status(201)
        self.finish({key: answer.get(key) for key in ("id", "state", "title", "project_id")})

    def _file_in_home(self, path: str) -> str:
        manager = self.contents_manager
        guard = manager if isinstance(manager, GuardedContentsManager) else GuardedContentsManager(
            root_dir=manager.root_dir
        )
        home = os.path.realpath(manager.root_dir)
        # The home's outputs/ links to the project's outputs folder, which lies outside the home.
        mine = [home]
        if os.environ.get("TRE_OUTPUTS_DIR"):
            mine.append(os.path.realpath(os.environ["TRE_OUTPUTS_DIR"]))
        relative = path.strip("/")
        real = os.path.realpath(os.path.join(home, relative))
        if guard._in_protected(relative, real):
            raise web.HTTPError(
                403, f"{relative} is in the extract: submit the tables and figures you made from it, not the data."
            )
        if not any(real == root or real.startswith(root + os.sep) for root in mine):
            raise web.HTTPError(403, f"{relative} is outside your workspace home; only your own files are submitted.")
        if not os.path.isfile(real):
            raise web.HTTPError(400, f"{relative} is not a file.")
        if os.path.getsize(real) > MAX_FILE_BYTES:
            raise web.HTTPError(
                400, f"{relative} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; outputs must be summaries."
            )
        # The resolved path is what is read. These refusals catch mistakes in the browser; they are not
        # the control (tre-submit in a terminal can read the extract too): the output checkers are.
        return real


def _replacing(replace: str, group: str, files: list[str]) -> dict[str, Any]:
    """Resubmission arguments for "this file replaces the request's file ``replace`` (in ``group``)".

    A file of the same name replaces it by itself; under another name the old one is removed, and the
    new one joins the old one's group.
    """
    if not replace:
        return {}
    if len(files) != 1:
        raise web.HTTPError(400, "Choose exactly one file to replace a file of the request with.")
    same_name = os.path.basename(files[0]) == replace
    return {"remove": [] if same_name else [replace], "group": group or None}


class OutputRequestStatusHandler(APIHandler):
    """``GET tre/output-requests/<id>``: a request of this project as the queue shows its team (for the
    resubmission dialog: its state, files and the checkers' shared comments). Read with the workspace's
    output token, server-side; the browser never holds it."""

    auth_resource = "contents"

    @web.authenticated
    @authorized
    async def get(self, request_id: str) -> None:
        try:
            answer = await asyncio.to_thread(request_status, request_id)
        except SubmitError as error:
            raise web.HTTPError(502, str(error)) from None
        files = [
            {key: item.get(key) for key in ("name", "group", "automated_status")}
            for item in answer.get("files", [])
            if isinstance(item, dict)
        ]
        comments = [c.get("body") for c in answer.get("shared_comments", []) if isinstance(c, dict)]
        self.finish(
            {
                **{key: answer.get(key) for key in ("id", "title", "state", "round")},
                "files": files,
                "comments": comments,
            }
        )


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise web.HTTPError(400, f"{name} must be text.")
    return (value or "").strip()


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jupyter.workspace_guard"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Put the refusals ahead of the server's own handlers (tornado inserts them before the defaults)."""
    base = serverapp.web_app.settings["base_url"].rstrip("/")
    serverapp.web_app.add_handlers(
        ".*$",
        [
            (rf"{base}/files/.*", NoDownloadHandler),
            (rf"{base}/nbconvert/.*", NoDownloadHandler),
            (rf"{base}/tre/output-requests", OutputRequestHandler),
            (rf"{base}/tre/output-requests/([A-Za-z0-9_-]{{1,64}})", OutputRequestStatusHandler),
        ],
    )
    # JupyterLab's top bar names the project and links back to its page (jupyter/labextension).
    page_config = serverapp.web_app.settings.setdefault("page_config_data", {})
    name = os.environ.get("TRE_PROJECT_NAME") or os.environ.get("TRE_PROJECT_ID", "")
    if name:
        page_config["treProjectName"] = name
    url = os.environ.get("TRE_PROJECT_URL", "")
    if url.startswith(("https://", "http://")):
        page_config["treProjectUrl"] = url
    serverapp.log.info("TRE workspace guard: browser downloads are switched off; outputs go to checking")
