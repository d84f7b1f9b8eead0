"""Who is asking: a signed-in person (cookie session, after both factors) or an API token.

Runs before every request and sets ``g.user`` only for a fully authenticated, active person.
A session cookie counts only while its ``epoch`` matches the account's (signing out, a password
reset or change, or deactivation bumps it, so every older cookie stops working at once), while the
person has made a request in the last 30 minutes, and for at most ``TRE_SESSION_MAX_HOURS`` (12 by
default) after they signed in, however active they are.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Flask, current_app, g, request, session
from flask_wtf.csrf import CSRFError
from sqlalchemy import bindparam, exists, func, select

from tre.core.db import READ_WITHOUT_WRITE_LOCK, utcnow
from tre.core.identity import Caller, PersonalApiToken, TokenUse, User, UserRole
from tre.core.tokens import (
    PERSONAL_TOKEN_PREFIX,
    Claims,
    InvalidToken,
    StoredState,
    personal_token_lookup_prefix,
    personal_token_matches,
)

API_AUDIENCE = "tre-api"
PERSONAL_PURPOSE = "personal"  # the purpose of a personal token, in tre/access.py's table
SESSION_IDLE_LIMIT = dt.timedelta(minutes=30)
# A session's last-seen time is rewritten at most this often. Re-signing and sending the cookie on
# every request cost about a tenth of a page's CPU; a coarser "seen" only ever ends an idle session
# earlier (by at most this), never later.
SESSION_SEEN_STEP_SECONDS = 60


def platform() -> Any:
    return current_app.extensions["tre.platform"]


def _reading_connection() -> Any:
    """The connection of the request's session, its transaction begun (on SQLite) without the write lock.

    Who is asking reads columns, not objects, so its statements run on the session's connection (in
    its transaction) without the ORM's execution around each (ADR 0049).

    Who is asking only reads, and on SQLite its transaction is committed before the view begins its
    own (see ``load_current_user``): taking the write lock and the write queue's turn for it made
    every signed-in request wait behind every writer twice, and cost a ``BEGIN IMMEDIATE``. Its
    SELECTs now read the last committed state (WAL) without either (ADR 0049); anything but a SELECT
    in it fails. On PostgreSQL the options change nothing: the view carries on in the transaction.
    """
    s = platform().db.session()
    if not s.in_transaction():
        return s.connection(execution_options=READ_WITHOUT_WRITE_LOCK)
    return s.connection()


def load_current_user() -> None:
    g.user = None
    g.token_claims = None
    g.token_purpose = None
    g.auth_refusal = None
    try:
        header = request.headers.get("Authorization", "")
        if request.path.startswith("/api/"):
            if header.startswith("Bearer "):
                _load_from_bearer(header[len("Bearer ") :].strip())
            elif header:
                g.auth_refusal = "authorization header not a bearer token"
            return  # the API never trusts the cookie, so cross-site requests cannot ride a session
        _load_from_session()
    except BaseException:
        # The read failed (the database went away): that error is the answer (503), not the
        # PendingRollbackError a commit of the broken transaction would raise instead (a 500).
        platform().db.session.rollback()
        raise
    finally:
        # End the read that found the person: on SQLite every transaction holds the write lock
        # (BEGIN IMMEDIATE), so keeping it open made /readyz and /metrics, which use their own
        # connection, wait 30 s and fail for anyone signed in (found by the access matrix).
        # PostgreSQL's read holds no lock, and ending it cost three round trips per request
        # (COMMIT, then the pool's ping and a BEGIN for the view's first statement): the view
        # carries on in the same transaction.
        # A request that read nothing (no cookie, no credential) began no transaction: nothing to end.
        db = platform().db
        if db.engine.dialect.name != "postgresql" and db.session().in_transaction():
            db.session.commit()


def _load_from_session() -> None:
    uid = session.get("uid")
    if not uid:
        return
    last_seen = session.get("seen")
    signed_in = session.get("signed_in")
    now = int(utcnow().timestamp())
    if last_seen is None or now - int(last_seen) > SESSION_IDLE_LIMIT.total_seconds():
        session.clear()
        return
    if signed_in is None or now - int(signed_in) > session_max_age().total_seconds():
        session.clear()
        return
    user = _person(uid)
    if user is None or not user.is_active or user.session_epoch != session.get("epoch") or not user.mfa_enrolled:
        session.clear()
        return
    if now - int(last_seen) >= SESSION_SEEN_STEP_SECONDS:
        session["seen"] = now  # the cookie is written (re-signed) only when the session changed
    g.user = user


# Who is asking is read on every request, so its statements are built once: SQLAlchemy keeps a
# statement object's cache key, and running it again costs no statement building. Nothing about the
# person is kept between requests: each request reads the account as it is now, so a deactivated
# account, a changed role or a removed membership counts from the next request (ADR 0027).
#
# They read the columns a request uses and the role names as one aggregated column, into a
# ``Caller`` (ADR 0049): loading the ORM ``User`` with its roles joined built an object per role and
# the account's every column on every request, for callers that use its id and permissions.
_USERS, _ROLES, _TOKENS = User.__table__, UserRole.__table__, PersonalApiToken.__table__
_ROLE_NAMES = (
    select(func.aggregate_strings(_ROLES.c.role, ",")).where(_ROLES.c.user_id == _USERS.c.id).scalar_subquery()
)
_CALLER_COLUMNS = (
    _USERS.c.id, _USERS.c.email, _USERS.c.display_name, _USERS.c.is_active, _USERS.c.mfa_enrolled_at,
    _USERS.c.session_epoch, _USERS.c.token_generation, _USERS.c.locked_until, _ROLE_NAMES.label("role_names"),
)
_PERSON = select(*_CALLER_COLUMNS).where(_USERS.c.id == bindparam("user_id"))
_PERSONAL_TOKEN_AND_PERSON = (
    select(_TOKENS.c.token_hash, _TOKENS.c.revoked_at, _TOKENS.c.expires_at, _TOKENS.c.user_id, *_CALLER_COLUMNS)
    .select_from(_TOKENS.outerjoin(_USERS, _USERS.c.id == _TOKENS.c.user_id))
    .where(_TOKENS.c.lookup_prefix == bindparam("prefix"))
)


# A signed token's person (with roles) and whether its jti is revoked, in one statement of the
# request's own transaction. Before, the token service read the revocation and the person's token
# generation in two sessions of their own (on SQLite each a BEGIN IMMEDIATE of its own; on
# PostgreSQL each a pool checkout, its ping and a transaction), then the person was read a third time.
_TOKEN_USES = TokenUse.__table__
_TOKEN_PERSON = select(
    *_CALLER_COLUMNS,
    exists().where(_TOKEN_USES.c.jti == bindparam("jti"), _TOKEN_USES.c.kind == "revoked").label("revoked"),
).where(_USERS.c.id == bindparam("user_id"))

_REVOKED = select(_TOKEN_USES.c.jti).where(_TOKEN_USES.c.jti == bindparam("jti"), _TOKEN_USES.c.kind == "revoked")


def _caller(row: Any) -> Caller:
    """The person of a row of ``_CALLER_COLUMNS``."""
    roles = row.role_names
    return Caller(
        id=row.id, email=row.email, display_name=row.display_name, is_active=bool(row.is_active),
        mfa_enrolled=row.mfa_enrolled_at is not None, session_epoch=row.session_epoch,
        token_generation=row.token_generation, locked_until=row.locked_until,
        role_names=sorted(roles.split(",")) if roles else [],
    )


def _person(user_id: str) -> Caller | None:
    """The account with its role names, in one statement: every request needs both (for its permissions)."""
    row = _reading_connection().execute(_PERSON, {"user_id": user_id}).first()
    return _caller(row) if row is not None else None


def session_max_age() -> dt.timedelta:
    """How long a session may last from sign-in, however active (the absolute limit)."""
    return dt.timedelta(hours=current_app.extensions["tre.settings"].session_max_hours)


def start_session(user: User, *, signed_in_at: int | None = None) -> None:
    """Begin a fresh session (a new cookie, so a planted one cannot be fixed on the person).

    ``signed_in_at`` carries the original sign-in time over when a session is renewed (after a
    password change), so renewing never extends the absolute limit.
    """
    now = int(utcnow().timestamp())
    session.clear()
    session.permanent = True
    session["uid"] = user.id
    session["epoch"] = user.session_epoch
    session["seen"] = now
    session["signed_in"] = int(signed_in_at) if signed_in_at is not None else now


def _load_from_bearer(token: str) -> None:
    """Set ``g.user`` and ``g.token_purpose`` for a token that passes every check; otherwise leave
    ``g.auth_refusal`` saying why (for the audit log: never the token itself)."""
    if token.startswith(PERSONAL_TOKEN_PREFIX):
        try:
            prefix = personal_token_lookup_prefix(token)
        except InvalidToken:
            g.auth_refusal = "personal token malformed"
            return
        # The token and its person (with roles) in one statement.
        row = _reading_connection().execute(_PERSONAL_TOKEN_AND_PERSON, {"prefix": prefix}).first()
        user = _caller(row) if row is not None and row.id is not None else None  # an outer join
        if row is None:
            g.auth_refusal = "personal token unknown"
        elif not personal_token_matches(token, row.token_hash):
            g.auth_refusal = "personal token secret wrong"
        elif row.revoked_at is not None:
            g.auth_refusal = "personal token revoked"
        elif row.expires_at < utcnow():
            g.auth_refusal = "personal token expired"
        else:
            if user is None or not user.is_active or not user.mfa_enrolled:
                g.auth_refusal = "personal token of an inactive account"
            else:
                g.user = user
                g.token_purpose = PERSONAL_PURPOSE
        return
    found: list[Caller] = []

    def stored(claims: Claims) -> StoredState:
        conn = _reading_connection()
        row = conn.execute(_TOKEN_PERSON, {"user_id": claims.subject, "jti": claims.jti}).first()
        if row is None:  # no such account: the token service still says whether it was revoked first
            revoked = conn.scalar(_REVOKED, {"jti": claims.jti}) is not None
            return StoredState(revoked=revoked, generation=None)
        person = _caller(row)
        found.append(person)
        return StoredState(revoked=bool(row.revoked), generation=person.token_generation)

    try:
        claims = platform().tokens.verify(token, audience=API_AUDIENCE, stored=stored)
    except InvalidToken as refused:
        g.auth_refusal = f"token {refused.reason.value}"
        return
    user = found[0] if found else None
    if user is None or not user.is_active:
        g.auth_refusal = "token of an inactive account"
        return
    if claims.project_id is not None and not _project_still_open_to(user, claims.project_id):
        g.auth_refusal = "token for a project its person may no longer use"
        return
    g.user = user
    g.token_claims = claims
    g.token_purpose = claims.purpose


def _project_still_open_to(user: Caller, project_id: str) -> bool:
    """A project-bound token lives only while the access gate would still let its person in: it
    dies with the project's suspension or closure (and with the person's membership or training)."""
    from projects.gate import check_access, remember_allowed

    session = platform().db.session
    if not check_access(session, user.id, project_id).allowed:
        return False
    # The view's own ask in this transaction (an output submission's) answers from this one; on SQLite
    # this transaction ends before the view begins its own, so there the view asks again (ADR 0076).
    remember_allowed(session, user.id, project_id)
    return True


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, _csrf_refused)


def _csrf_refused(error: CSRFError) -> Any:
    """A form posted without a valid CSRF token: audited (without the token), then the usual 400."""
    from tre import errors
    from tre.access import record_authentication_refusal

    record_authentication_refusal(f"csrf: {error.description}"[:200])
    return errors.handle_http_exception(error)


def identity_service() -> Any:
    from tre.core.identity import Identity

    p = platform()
    return Identity(p.db.session, p.keys, p.audit, request_id=g.get("request_id"))
