"""A small OpenID Connect provider for tests, served over real HTTP on a free 127.0.0.1 port.

It speaks enough of the protocol for the TRE's client to be tested for real: a discovery document,
a JWKS, an authorisation endpoint that issues a code for the person set on ``provider.person``
(requiring ``state``, ``nonce`` and a PKCE S256 challenge), and a token endpoint that checks the
code (single use, same client, same redirect URI), the client's secret (HTTP Basic or form) and
the PKCE verifier, and answers with an id_token signed RS256 by a real RSA key.

``provider.tamper`` makes the next id_tokens wrong in one named way, so tests can prove the TRE
refuses them: ``signature``, ``expired``, ``audience``, ``issuer``, ``nonce``, ``no_id_token``.

It signs with joserfc (authlib's own JOSE library), so pyjwt stays the token module's alone.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import WSGIRequestHandler, make_server

TAMPERINGS = ("signature", "expired", "audience", "issuer", "nonce", "no_id_token")


@dataclass
class Person:
    sub: str
    email: str
    email_verified: bool = True
    amr: list[str] = field(default_factory=lambda: ["pwd"])
    name: str = "Test Person"


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str
    person: Person


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class OidcTestProvider:
    def __init__(self, client_id: str = "tre-test-client", client_secret: str | None = None) -> None:
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key-1"
        self.person: Person | None = None
        self.tamper: str | None = None
        # Everything secret the provider handed out or received, so tests can look for leaks.
        self.issued_secrets: list[str] = [self.client_secret]
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, Any]] = []
        self._codes: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.issuer = ""

    # --- running --------------------------------------------------------------------------------

    def start(self) -> OidcTestProvider:
        self._server = make_server("127.0.0.1", 0, self._app(), threaded=True, request_handler=_QuietHandler)
        self.issuer = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-test-provider", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- the protocol ---------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile"],
        }

    def jwks(self) -> dict[str, Any]:
        public = dict(RSAKey.import_key(self.key.public_key()).as_dict(private=False))
        public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [public]}

    def _app(self) -> Flask:
        app = Flask("oidc_test_provider")

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            return jsonify(self.discovery())

        @app.get("/jwks")
        def jwks() -> Any:
            return jsonify(self.jwks())

        @app.get("/authorize")
        def authorize() -> Any:
            args = request.args.to_dict()
            self.authorize_requests.append(args)
            required = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge")
            missing = [k for k in required if not args.get(k)]
            if (
                missing
                or args["response_type"] != "code"
                or args["client_id"] != self.client_id
                or args.get("code_challenge_method") != "S256"
                or "openid" not in args["scope"].split()
            ):
                return jsonify({"error": "invalid_request", "missing": missing}), 400
            back = args["redirect_uri"]
            if self.person is None:
                return redirect(f"{back}?{urlencode({'error': 'access_denied', 'state': args['state']})}")
            code = secrets.token_urlsafe(24)
            with self._lock:
                self._codes[code] = _Grant(
                    self.client_id, back, args["code_challenge"], args["nonce"], self.person
                )
            self.issued_secrets.append(code)
            return redirect(f"{back}?{urlencode({'code': code, 'state': args['state']})}")

        @app.post("/token")
        def token() -> Any:
            form = request.form
            record: dict[str, Any] = {"client_auth": None, "pkce_ok": False}
            self.token_requests.append(record)
            if request.authorization and request.authorization.type == "basic":
                record["client_auth"] = "client_secret_basic"
                given_id, given_secret = request.authorization.username, request.authorization.password
            else:
                record["client_auth"] = "client_secret_post"
                given_id, given_secret = form.get("client_id"), form.get("client_secret")
            if given_id != self.client_id or not secrets.compare_digest(
                (given_secret or "").encode(), self.client_secret.encode()
            ):
                return jsonify({"error": "invalid_client"}), 401
            if form.get("grant_type") != "authorization_code":
                return jsonify({"error": "unsupported_grant_type"}), 400
            with self._lock:
                grant = self._codes.pop(form.get("code", ""), None)  # a code works once
            if grant is None or grant.client_id != given_id or grant.redirect_uri != form.get("redirect_uri"):
                return jsonify({"error": "invalid_grant"}), 400
            verifier = form.get("code_verifier", "")
            if verifier:
                self.issued_secrets.append(verifier)
            expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if not verifier or not secrets.compare_digest(expected, grant.code_challenge):
                return jsonify({"error": "invalid_grant", "error_description": "PKCE verifier does not match"}), 400
            record["pkce_ok"] = True
            access_token = secrets.token_urlsafe(32)
            answer: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer", "expires_in": 300}
            if self.tamper != "no_id_token":
                answer["id_token"] = self._id_token(grant)
                self.issued_secrets.append(answer["id_token"])
            self.issued_secrets.append(access_token)
            return jsonify(answer)

        return app

    def _id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        person = grant.person
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": person.sub,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
            "nonce": grant.nonce,
            "email": person.email,
            "email_verified": person.email_verified,
            "amr": list(person.amr),
            "name": person.name,
        }
        key: Any = self.key
        if self.tamper == "signature":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # same kid, wrong key
        elif self.tamper == "expired":
            claims.update(iat=now - 3600, exp=now - 1800, auth_time=now - 3600)
        elif self.tamper == "audience":
            # azp names the TRE, so only a real audience check catches it.
            claims.update(aud="another-relying-party", azp=grant.client_id)
        elif self.tamper == "issuer":
            claims["iss"] = "http://127.0.0.1:1/not-the-provider"
        elif self.tamper == "nonce":
            claims["nonce"] = secrets.token_urlsafe(16)
        return jwt.encode({"alg": "RS256", "kid": self.kid}, claims, RSAKey.import_key(key))
