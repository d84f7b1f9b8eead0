"""A stand-in for the control plane's hub and output APIs, served over real HTTP on 127.0.0.1.

It speaks exactly the contract the plug-ins code against, keeps what it was asked, and lets a test
decide each answer (or make the server fail). Tokens are single-use, as the real ones are.
"""

from __future__ import annotations

import html
import json
import threading
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote


@dataclass
class FakeControlPlane:
    service_secret: str
    output_token: str = "output-token-" + uuid.uuid4().hex
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)
    grants: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    submissions: list[dict[str, Any]] = field(default_factory=list)
    # What GET /api/v1/outputs/requests/<id> answers (with the output token), by request id.
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_with: int | None = None
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def issue_token(self, username: str, project_id: str) -> str:
        token = "login-" + uuid.uuid4().hex
        self.tokens[token] = {
            "username": username,
            "user_id": username.removeprefix("u-"),
            "project_id": project_id,
            "server_name": project_id.lower(),
        }
        return token

    def allow(self, username: str, project_id: str, **grant: Any) -> None:
        self.grants[(username, project_id.lower())] = {"allowed": True, "project_id": project_id, **grant}

    def refuse(self, username: str, server_name: str, reason: str) -> None:
        self.grants[(username, server_name)] = {"allowed": False, "reason": reason}

    def gate_calls(self) -> list[dict[str, Any]]:
        return [body for path, body in self.calls if path.endswith("authorise-spawn")]

    def start(self) -> FakeControlPlane:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any], problem: bool = False) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "application/problem+json" if problem else "application/json"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                """``/open/<token>?hub=<url>``: the control plane's "Open workspace" form, auto-submitted; and
                ``/api/v1/outputs/requests/<id>``: a request's status, as the queue shows its team."""
                path, _, query = self.path.partition("?")
                if path.startswith("/api/v1/outputs/requests/"):
                    if self.headers.get("Authorization") != f"Bearer {fake.output_token}":
                        self._send(401, {"title": "Unauthorised"}, problem=True)
                    elif path.rsplit("/", 1)[-1] in fake.requests:
                        self._send(200, fake.requests[path.rsplit("/", 1)[-1]])
                    else:
                        self._send(404, {"title": "Not Found", "detail": "No such output request"}, problem=True)
                    return
                if not path.startswith("/open/") or not query.startswith("hub="):
                    self._send(404, {"title": "Not found"}, problem=True)
                    return
                token, hub_url = (
                    html.escape(path[len("/open/") :]),
                    html.escape(unquote(query[len("hub=") :])),
                )
                page = (
                    f'<form id="open" method="post" action="{hub_url}/hub/tre-login">'
                    f'<input type="hidden" name="token" value="{token}">'
                    '<button type="submit">Open workspace</button></form>'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if fake.fail_with:
                    self._send(fake.fail_with, {"title": "broken"}, problem=True)
                    return
                if self.path == "/api/v1/outputs/requests":
                    self._outputs(raw)
                    return
                if self.path.startswith("/api/v1/outputs/requests/") and self.path.endswith("/resubmission"):
                    self._outputs(raw, resubmission_of=self.path.split("/")[-2])
                    return
                if self.headers.get("Authorization") != f"Bearer {fake.service_secret}":
                    self._send(401, {"title": "Unauthorised", "detail": "bad service token"}, problem=True)
                    return
                body = json.loads(raw or b"{}")
                fake.calls.append((self.path, body))
                if self.path == "/api/v1/hub/redeem":
                    redemption = fake.tokens.pop(body.get("token", ""), None)
                    if redemption is None:
                        self._send(
                            403,
                            {
                                "title": "Invalid token",
                                "detail": "This link has expired or was already used.",
                            },
                            problem=True,
                        )
                    else:
                        self._send(200, redemption)
                elif self.path == "/api/v1/hub/authorise-spawn":
                    key = (body.get("username", ""), body.get("server_name", ""))
                    self._send(
                        200, fake.grants.get(key, {"allowed": False, "reason": "not a project member"})
                    )
                else:
                    self._send(404, {"title": "Not found"}, problem=True)

            def _outputs(self, raw: bytes, resubmission_of: str | None = None) -> None:
                if self.headers.get("Authorization") != f"Bearer {fake.output_token}":
                    self._send(401, {"title": "Unauthorised"}, problem=True)
                    return
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = BytesParser(policy=HTTP).parsebytes(head + raw)
                fields: dict[str, str] = {}
                files: dict[str, bytes] = {}
                code: dict[str, bytes] = {}
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if part.get_filename():
                        (code if name == "code" else files)[part.get_filename()] = part.get_payload(decode=True)
                    else:
                        fields[name] = part.get_payload(decode=True).decode()
                request_id = resubmission_of or "req-" + uuid.uuid4().hex[:8]
                sent = {"id": request_id, "fields": fields, "files": files, "code": code}
                if resubmission_of:
                    sent["resubmission_of"] = resubmission_of
                fake.submissions.append(sent)
                self._send(200 if resubmission_of else 201, {"id": request_id, "state": "submitted"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
