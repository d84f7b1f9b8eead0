"""Inside the workspace's Jupyter server: close the browser's download paths around the output queue.

Loaded only in the workspace runtime (it needs ``jupyter_server``, which the hub does not have). The
decision, in docs/workspaces.md: a researcher's browser may *view* the work (notebooks, their plots
and tables, small text files) but may not *download* files. So ``/files/`` and ``/nbconvert/`` answer
403; the contents API never hands out (nor copies) a file that lies in the extract, whatever path or
symlink names it, never a binary file other than an image (a copied Parquet file would otherwise
leave whole), and nothing larger than ``max_view_bytes``; JupyterLab's download commands are
switched off (page_config.json, written by the runtime builder). Results leave only through
``tre-submit`` and the output checkers.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web
from traitlets import Integer, List, Unicode

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
        ],
    )
    serverapp.log.info("TRE workspace guard: browser downloads are switched off")
