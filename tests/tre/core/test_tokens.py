"""API tokens: every forgery and misuse we know of is refused; rotation, JWKS and personal tokens work.

Forged tokens are built by hand here (base64url, JSON, raw Ed25519 or HMAC signatures) rather than
with pyjwt, so the tests do not share the library's assumptions with the code under test.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import pickle
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat

import tre.core.tokens as tokens_module
from tre.core.keys import InMemoryKeyProvider
from tre.core.tokens import (
    Claims,
    InMemoryRevocations,
    InMemorySingleUse,
    InvalidToken,
    Refusal,
    SigningKeyring,
    StoredState,
    TokenKeyError,
    TokenService,
    hash_personal_token,
    key_id,
    new_personal_token,
    personal_token_lookup_prefix,
    personal_token_matches,
)

ISSUER = "https://tre.example.nhs.uk"
AUDIENCE = "tre-api"
T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
REPO = Path(__file__).resolve().parents[3]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def make_service(
    keyring: SigningKeyring | None = None,
    clock: Clock | None = None,
    revocations: InMemoryRevocations | None = None,
    single_use: InMemorySingleUse | None = None,
    issuer: str = ISSUER,
) -> TokenService:
    return TokenService(
        keyring or SigningKeyring.generate(),
        issuer,
        is_revoked=(revocations or InMemoryRevocations()).is_revoked,
        consume=(single_use or InMemorySingleUse()).consume,
        clock=clock or Clock(),
    )


def issue(service: TokenService, **overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "subject": "user-1",
        "audience": AUDIENCE,
        "purpose": "api",
        "ttl": dt.timedelta(minutes=15),
    }
    arguments.update(overrides)
    return service.issue(**arguments)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segments(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())


def ed25519_token(header: dict[str, Any], payload: dict[str, Any], private: Ed25519PrivateKey) -> str:
    signing_input = segments(header, payload)
    return signing_input + "." + b64url(private.sign(signing_input.encode("ascii")))


def hmac_token(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = segments(header, payload)
    return (
        signing_input + "." + b64url(hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest())
    )


def good_payload(**overrides: Any) -> dict[str, Any]:
    now = int(T0.timestamp())
    payload: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": "forged-jti",
        "purpose": "api",
    }
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def refusal(
    service: TokenService, token: Any, audience: str = AUDIENCE, purpose: str | None = None
) -> Refusal:
    with pytest.raises(InvalidToken) as refused:
        service.verify(token, audience, purpose)
    return refused.value.reason


def own_key(keyring: SigningKeyring) -> tuple[str, Ed25519PrivateKey]:
    return keyring.signing_key()


# -- the happy path --------------------------------------------------------------------------------


def test_issued_token_verifies_with_all_claims() -> None:
    service = make_service()

    token = issue(service, project_id="proj-7", extra={"scope": "workspace"})
    claims = service.verify(token, AUDIENCE, purpose="api")

    assert isinstance(claims, Claims)
    assert (claims.subject, claims.audience, claims.issuer, claims.purpose) == (
        "user-1",
        AUDIENCE,
        ISSUER,
        "api",
    )
    assert claims.project_id == "proj-7"
    assert claims.extra == {"scope": "workspace"}
    assert claims.issued_at == claims.not_before == T0
    assert claims.expires_at == T0 + dt.timedelta(minutes=15)
    assert len(claims.jti) >= 22


def test_issued_token_header_names_eddsa_and_current_kid() -> None:
    service = make_service()

    header = json.loads(base64.urlsafe_b64decode(issue(service).split(".")[0] + "=="))

    assert header == {"alg": "EdDSA", "kid": service.keyring.current_kid, "typ": "JWT"}


def test_issued_tokens_have_distinct_jtis() -> None:
    service = make_service()

    jtis = {service.verify(issue(service), AUDIENCE).jti for _ in range(20)}

    assert len(jtis) == 20


def test_issue_refuses_lifetime_over_maximum_or_reserved_extra_claims() -> None:
    service = make_service()

    with pytest.raises(ValueError, match="lives between"):
        issue(service, ttl=dt.timedelta(days=2))
    with pytest.raises(ValueError, match="lives between"):
        issue(service, ttl=dt.timedelta(0))
    with pytest.raises(ValueError, match="reserved"):
        issue(service, extra={"aud": "somewhere-else"})
    with pytest.raises(ValueError, match="subject"):
        issue(service, subject="")


# -- forgeries -------------------------------------------------------------------------------------


def test_token_with_forged_signature_is_refused() -> None:
    service = make_service()
    kid, _ = own_key(service.keyring)
    attacker = Ed25519PrivateKey.generate()

    token = ed25519_token({"alg": "EdDSA", "kid": kid, "typ": "JWT"}, good_payload(), attacker)

    assert refusal(service, token) is Refusal.SIGNATURE


def test_token_with_altered_payload_is_refused() -> None:
    service = make_service()
    header, _, signature = issue(service).split(".")
    forged_payload = b64url(json.dumps(good_payload(sub="administrator")).encode())

    assert refusal(service, f"{header}.{forged_payload}.{signature}") is Refusal.SIGNATURE


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_token_with_alg_none_is_refused(alg: str) -> None:
    service = make_service()
    kid, _ = own_key(service.keyring)

    unsigned = segments({"alg": alg, "kid": kid, "typ": "JWT"}, good_payload()) + "."

    assert refusal(service, unsigned) is Refusal.ALGORITHM


def test_token_hmac_signed_with_public_key_is_refused() -> None:
    """Algorithm confusion: an attacker signs HS256 using our published public key as the secret."""
    service = make_service()
    kid, private = own_key(service.keyring)
    public = private.public_key()
    jwk_x = service.jwks()["keys"][0]["x"]
    secrets_an_attacker_can_see = [
        public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        jwk_x.encode(),
        json.dumps(service.jwks()["keys"][0]).encode(),
    ]

    for alg in ("HS256", "HS384", "HS512"):
        for secret in secrets_an_attacker_can_see:
            token = hmac_token({"alg": alg, "kid": kid, "typ": "JWT"}, good_payload(), secret)
            assert refusal(service, token) is Refusal.ALGORITHM


def test_token_claiming_eddsa_but_hmac_signed_with_public_key_is_refused() -> None:
    service = make_service()
    kid, private = own_key(service.keyring)
    secret = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    token = hmac_token({"alg": "EdDSA", "kid": kid, "typ": "JWT"}, good_payload(), secret)

    assert refusal(service, token) is Refusal.SIGNATURE


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "Ed25519", "eddsa"])
def test_token_with_any_other_algorithm_is_refused(alg: str) -> None:
    service = make_service()
    kid, private = own_key(service.keyring)

    token = ed25519_token({"alg": alg, "kid": kid, "typ": "JWT"}, good_payload(), private)

    assert refusal(service, token) is Refusal.ALGORITHM


@pytest.mark.parametrize("header_field", ["jwk", "jku", "x5u", "x5c", "crit"])
def test_token_carrying_its_own_key_or_rules_is_refused(header_field: str) -> None:
    service = make_service()
    kid, private = own_key(service.keyring)
    header = {"alg": "EdDSA", "kid": kid, "typ": "JWT", header_field: "https://attacker.example/key"}

    assert refusal(service, ed25519_token(header, good_payload(), private)) is Refusal.MALFORMED


def test_token_with_unknown_kid_is_refused() -> None:
    service = make_service()
    attacker = Ed25519PrivateKey.generate()
    header = {"alg": "EdDSA", "kid": key_id(attacker.public_key()), "typ": "JWT"}

    assert refusal(service, ed25519_token(header, good_payload(), attacker)) is Refusal.UNKNOWN_KEY


def test_token_without_kid_is_refused() -> None:
    service = make_service()
    _, private = own_key(service.keyring)

    token = ed25519_token({"alg": "EdDSA", "typ": "JWT"}, good_payload(), private)

    assert refusal(service, token) is Refusal.UNKNOWN_KEY


@pytest.mark.parametrize("kid", [7, ["x"], {"kid": "x"}])
def test_token_with_non_string_kid_is_refused(kid: Any) -> None:
    service = make_service()
    _, private = own_key(service.keyring)

    token = ed25519_token({"alg": "EdDSA", "kid": kid}, good_payload(), private)

    assert refusal(service, token) in (Refusal.MALFORMED, Refusal.UNKNOWN_KEY)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "a.b", "x" * 9000, None, b"bytes"])
def test_malformed_token_is_refused(token: Any) -> None:
    assert refusal(make_service(), token) is Refusal.MALFORMED


# -- claims ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "aud", "iss", "jti", "sub", "purpose"])
def test_validly_signed_token_missing_a_required_claim_is_refused(claim: str) -> None:
    service = make_service()
    kid, private = own_key(service.keyring)
    payload = good_payload(**{claim: None})

    token = ed25519_token({"alg": "EdDSA", "kid": kid, "typ": "JWT"}, payload, private)

    assert refusal(service, token) is Refusal.MISSING_CLAIM


@pytest.mark.parametrize("claim, value", [("exp", "tomorrow"), ("exp", True), ("iat", 1.5), ("jti", 5)])
def test_validly_signed_token_with_mistyped_claim_is_refused(claim: str, value: Any) -> None:
    service = make_service()
    kid, private = own_key(service.keyring)

    token = ed25519_token({"alg": "EdDSA", "kid": kid}, good_payload(**{claim: value}), private)

    assert refusal(service, token) is Refusal.MALFORMED


def test_expired_token_is_refused() -> None:
    clock = Clock()
    service = make_service(clock=clock)
    token = issue(service, ttl=dt.timedelta(minutes=5))

    clock.now = T0 + dt.timedelta(minutes=5, seconds=service.leeway.total_seconds())

    assert refusal(service, token) is Refusal.EXPIRED


def test_token_within_leeway_of_expiry_is_accepted() -> None:
    clock = Clock()
    service = make_service(clock=clock)
    token = issue(service, ttl=dt.timedelta(minutes=5))

    clock.now = T0 + dt.timedelta(minutes=5, seconds=5)

    assert service.verify(token, AUDIENCE).subject == "user-1"


def test_not_yet_valid_token_is_refused() -> None:
    issuing_clock = Clock(T0 + dt.timedelta(minutes=10))
    keyring = SigningKeyring.generate()
    token = issue(make_service(keyring, issuing_clock))

    assert refusal(make_service(keyring, Clock()), token) is Refusal.NOT_YET_VALID


def test_token_with_future_nbf_only_is_refused() -> None:
    service = make_service()
    kid, private = own_key(service.keyring)
    payload = good_payload(nbf=int(T0.timestamp()) + 3600)

    token = ed25519_token({"alg": "EdDSA", "kid": kid}, payload, private)

    assert refusal(service, token) is Refusal.NOT_YET_VALID


def test_token_from_slightly_fast_clock_is_accepted_within_leeway() -> None:
    keyring = SigningKeyring.generate()
    token = issue(make_service(keyring, Clock(T0 + dt.timedelta(seconds=5))))

    assert make_service(keyring, Clock()).verify(token, AUDIENCE).subject == "user-1"


def test_token_for_another_audience_is_refused() -> None:
    service = make_service()
    token = issue(service, audience="jupyterhub")

    assert refusal(service, token, audience=AUDIENCE) is Refusal.AUDIENCE


def test_token_with_audience_list_is_refused() -> None:
    service = make_service()
    kid, private = own_key(service.keyring)
    payload = good_payload(aud=[AUDIENCE, "jupyterhub"])

    token = ed25519_token({"alg": "EdDSA", "kid": kid}, payload, private)

    assert refusal(service, token) is Refusal.AUDIENCE


@pytest.mark.parametrize("issuer", ["https://other.example", ISSUER + ".evil.example", ISSUER[:-3], ""])
def test_token_from_another_issuer_is_refused(issuer: str) -> None:
    keyring = SigningKeyring.generate()
    kid, private = own_key(keyring)
    service = make_service(keyring)

    token = ed25519_token({"alg": "EdDSA", "kid": kid}, good_payload(iss=issuer or None), private)

    assert refusal(service, token) in (Refusal.ISSUER, Refusal.MISSING_CLAIM)


def test_token_with_same_keys_but_other_issuer_setting_is_refused() -> None:
    keyring = SigningKeyring.generate()
    token = issue(make_service(keyring, issuer="https://another-tre.example"))

    assert refusal(make_service(keyring), token) is Refusal.ISSUER


def test_token_for_another_purpose_is_refused() -> None:
    service = make_service()
    token = issue(service, purpose="jupyterhub-login")

    assert refusal(service, token, purpose="workspace") is Refusal.PURPOSE


# -- revocation and single use ---------------------------------------------------------------------


def test_revoked_token_is_refused() -> None:
    revocations = InMemoryRevocations()
    service = make_service(revocations=revocations)
    token = issue(service)
    jti = service.verify(token, AUDIENCE).jti

    revocations.revoke(jti)

    assert refusal(service, token) is Refusal.REVOKED


def test_single_use_token_is_accepted_once_then_refused_as_replay() -> None:
    service = make_service()
    token = issue(service, single_use=True, purpose="password-reset")

    claims = service.verify(token, AUDIENCE, purpose="password-reset")

    assert claims.single_use is True
    assert refusal(service, token, purpose="password-reset") is Refusal.REPLAYED


def test_single_use_token_without_consume_hook_is_refused() -> None:
    keyring = SigningKeyring.generate()
    service = TokenService(keyring, ISSUER, is_revoked=InMemoryRevocations().is_revoked, clock=Clock())
    token = issue(service, single_use=True)

    assert refusal(service, token) is Refusal.REPLAYED


def test_revoked_single_use_token_is_refused_without_being_consumed() -> None:
    revocations, ledger = InMemoryRevocations(), InMemorySingleUse()
    service = make_service(revocations=revocations, single_use=ledger)
    token, claims = service.issue_with_claims(
        "user-1", AUDIENCE, "api", dt.timedelta(minutes=5), single_use=True
    )

    revocations.revoke(claims.jti)

    assert refusal(service, token) is Refusal.REVOKED
    assert ledger.consume(claims.jti, claims.expires_at) is True


def test_ordinary_token_is_reusable_until_expiry() -> None:
    service = make_service()
    token = issue(service)

    assert service.verify(token, AUDIENCE) == service.verify(token, AUDIENCE)


# -- rotation --------------------------------------------------------------------------------------


def test_rotation_keeps_old_tokens_valid_until_old_key_is_retired() -> None:
    service = make_service()
    old_kid = service.keyring.current_kid
    old_token = issue(service)

    new_kid = service.keyring.rotate()
    new_token = issue(service)

    assert new_kid != old_kid
    assert service.verify(old_token, AUDIENCE).subject == "user-1"
    assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))["kid"] == new_kid

    service.keyring.retire(old_kid)

    assert refusal(service, old_token) is Refusal.UNKNOWN_KEY
    assert service.verify(new_token, AUDIENCE).subject == "user-1"


def test_retiring_current_signing_key_is_refused() -> None:
    keyring = SigningKeyring.generate()

    with pytest.raises(TokenKeyError, match="rotate first"):
        keyring.retire(keyring.current_kid)


# -- the keyring on disk ---------------------------------------------------------------------------


def test_keyring_file_is_created_owner_only_with_private_keys_sealed(tmp_path: Path) -> None:
    keys = InMemoryKeyProvider()

    keyring = SigningKeyring.in_instance(tmp_path, keys)

    path = tmp_path / tokens_module.SIGNING_KEYS_FILENAME
    _, private = keyring.signing_key()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, tokens_module.NoEncryption())
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b64url(raw) not in text and base64.b64encode(raw).decode() not in text and raw.hex() not in text
    assert keyring.current_kid in text


def test_keyring_loaded_again_verifies_tokens_from_first_instance(tmp_path: Path) -> None:
    keys = InMemoryKeyProvider()
    first = SigningKeyring.in_instance(tmp_path, keys)
    token = issue(make_service(first))

    second = SigningKeyring.in_instance(tmp_path, keys)

    assert second.current_kid == first.current_kid
    assert make_service(second).verify(token, AUDIENCE).subject == "user-1"


def test_keyring_rotation_is_saved_and_seen_by_other_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = InMemoryKeyProvider()
    writer = SigningKeyring.in_instance(tmp_path, keys)
    reader = SigningKeyring.in_instance(tmp_path, keys)
    writer.rotate()
    token = issue(make_service(writer))
    monkeypatch.setattr(tokens_module, "_RELOAD_INTERVAL_SECONDS", 0.0)

    assert make_service(reader).verify(token, AUDIENCE).subject == "user-1"
    assert SigningKeyring.in_instance(tmp_path, keys).current_kid == writer.current_kid


def test_unknown_kids_do_not_make_keyring_reread_file_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = InMemoryKeyProvider()
    service = make_service(SigningKeyring.in_instance(tmp_path, keys))
    reads: list[Path] = []
    real_read = tokens_module._read_keyring_file
    monkeypatch.setattr(tokens_module, "_read_keyring_file", lambda p, k: reads.append(p) or real_read(p, k))
    attacker = Ed25519PrivateKey.generate()

    for n in range(10):
        header = {"alg": "EdDSA", "kid": f"made-up-{n}"}
        assert refusal(service, ed25519_token(header, good_payload(), attacker)) is Refusal.UNKNOWN_KEY

    assert reads == []


def test_keyring_file_cannot_be_opened_with_another_master_key(tmp_path: Path) -> None:
    SigningKeyring.in_instance(tmp_path, InMemoryKeyProvider())

    with pytest.raises(TokenKeyError, match="unsealed"):
        SigningKeyring.in_instance(tmp_path, InMemoryKeyProvider())


def test_keyring_file_with_swapped_kid_is_refused(tmp_path: Path) -> None:
    keys = InMemoryKeyProvider()
    keyring = SigningKeyring.in_instance(tmp_path, keys)
    keyring.rotate()
    path = tmp_path / tokens_module.SIGNING_KEYS_FILENAME
    document = json.loads(path.read_text())
    first, second = document["keys"]
    first["sealed"], second["sealed"] = second["sealed"], first["sealed"]
    path.write_text(json.dumps(document))

    with pytest.raises(TokenKeyError):
        SigningKeyring.load(path, keys)


# -- JWKS ------------------------------------------------------------------------------------------


def test_jwks_publishes_every_verifying_key_as_okp_ed25519_current_first() -> None:
    keyring = SigningKeyring.generate()
    old_kid = keyring.current_kid
    new_kid = keyring.rotate()

    published = make_service(keyring).jwks()

    assert [k["kid"] for k in published["keys"]] == [new_kid, old_kid]
    for jwk in published["keys"]:
        assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg"}
        assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["alg"]) == ("OKP", "Ed25519", "sig", "EdDSA")
        assert "d" not in jwk


def test_jwks_key_verifies_issued_token_independently() -> None:
    service = make_service()
    token = issue(service)
    [jwk] = service.jwks()["keys"]
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "="))
    signing_input, _, signature = token.rpartition(".")

    public.verify(base64.urlsafe_b64decode(signature + "=="), signing_input.encode())
    assert jwk["kid"] == key_id(public)


# -- personal tokens -------------------------------------------------------------------------------


def test_personal_token_has_lookup_prefix_and_sha256_hash() -> None:
    token = new_personal_token()
    plaintext, lookup, stored_hash = token

    assert re.fullmatch(r"trepat_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", plaintext)
    assert personal_token_lookup_prefix(plaintext) == lookup
    assert stored_hash == hashlib.sha256(plaintext.encode()).hexdigest() == hash_personal_token(plaintext)
    assert plaintext not in stored_hash


def test_personal_token_matches_only_its_own_hash() -> None:
    mine, theirs = new_personal_token(), new_personal_token()

    assert personal_token_matches(mine.plaintext, mine.hash)
    assert not personal_token_matches(mine.plaintext, theirs.hash)
    altered = mine.plaintext[:-1] + ("B" if mine.plaintext.endswith("A") else "A")  # always a different token
    assert not personal_token_matches(altered, mine.hash)
    assert not personal_token_matches(None, mine.hash)  # type: ignore[arg-type]


@pytest.mark.parametrize("presented", ["", "trepat_", "ghp_abcdef", "trepat_XYZ_abc", None])
def test_personal_token_in_wrong_shape_is_refused(presented: Any) -> None:
    with pytest.raises(InvalidToken):
        personal_token_lookup_prefix(presented)


def test_personal_tokens_are_unique() -> None:
    assert len({new_personal_token().plaintext for _ in range(50)}) == 50


# -- the guard and the canary ----------------------------------------------------------------------


def test_only_tokens_module_imports_pyjwt() -> None:
    """jwt.encode/jwt.decode anywhere else could skip the algorithm and claim checks made here."""
    importing = re.compile(r"^\s*(import\s+jwt\b|from\s+jwt\b)", re.MULTILINE)
    allowed = REPO / "tre" / "core" / "tokens.py"
    offenders = []
    for package in ("tre", "projects", "pseudonymisation", "disclosure", "jupyter", "tests"):
        for path in (REPO / package).rglob("*.py"):
            if path != allowed and importing.search(path.read_text(encoding="utf-8", errors="replace")):
                offenders.append(str(path.relative_to(REPO)))

    assert offenders == []


def test_no_token_or_key_material_appears_in_logs_reprs_or_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    keys = InMemoryKeyProvider()
    keyring = SigningKeyring.in_instance(tmp_path, keys)
    keyring.rotate()
    service = make_service(keyring)
    token, claims = service.issue_with_claims(
        "user-1", AUDIENCE, "workspace", dt.timedelta(minutes=5), project_id="p1", single_use=True
    )
    service.verify(token, AUDIENCE, purpose="workspace")
    errors = []
    for bad, audience in (
        (token, AUDIENCE),
        (token, "other"),
        (token[:-4] + "AAAA", AUDIENCE),
        (token + "x", "a"),
    ):
        with pytest.raises(InvalidToken) as refused:
            service.verify(bad, audience)
        errors.append(refused.value)
    personal = new_personal_token()
    with pytest.raises(InvalidToken) as refused_personal:
        personal_token_lookup_prefix(personal.plaintext + "!")
    errors.append(refused_personal.value)
    private_keys = [
        keyring._keys[kid].private_bytes(Encoding.Raw, PrivateFormat.Raw, tokens_module.NoEncryption())
        for kid in keyring.kids
    ]

    shown = " ".join(
        [caplog.text, repr(service), str(keyring), repr(keyring), repr(claims), repr(personal), str(personal)]
        + [str(e) for e in errors]
        + [repr(e) for e in errors]
    )
    assert token not in shown
    assert token.split(".")[2] not in shown  # not even the signature
    assert personal.plaintext not in shown
    assert personal.plaintext.split("_", 2)[2] not in shown
    for raw in private_keys:
        for form in (raw.hex(), b64url(raw), base64.b64encode(raw).decode()):
            assert form not in shown
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(keyring)


def test_a_token_from_an_older_generation_of_its_person_is_refused() -> None:
    generations = {"rita": 3}
    service = TokenService(
        SigningKeyring.generate(), "https://tre.example", is_revoked=lambda _: False,
        generation_of=generations.get,
    )
    token = service.issue("rita", "tre-api", "api", dt.timedelta(minutes=5))
    assert service.verify(token, "tre-api").subject == "rita"

    generations["rita"] = 4

    with pytest.raises(InvalidToken) as refused:
        service.verify(token, "tre-api")
    assert refused.value.reason is Refusal.SUPERSEDED
    with pytest.raises(ValueError, match="unknown subject"):
        service.issue("nobody", "tre-api", "api", dt.timedelta(minutes=5))


def _service_with_generations(generations: dict[str, int], revoked: set[str]) -> TokenService:
    return TokenService(
        SigningKeyring.generate(), "https://tre.example", is_revoked=revoked.__contains__,
        generation_of=generations.get,
    )


def test_state_read_by_the_caller_is_judged_like_the_services_own_reads() -> None:
    generations, revoked = {"rita": 3}, set[str]()
    service = _service_with_generations(generations, revoked)
    token, claims = service.issue_with_claims("rita", "tre-api", "api", dt.timedelta(minutes=5))
    asked: list[str] = []

    def stored(seen: Claims) -> StoredState:
        asked.append(seen.jti)
        return StoredState(revoked=seen.jti in revoked, generation=generations.get(seen.subject))

    assert service.verify(token, "tre-api", stored=stored).subject == "rita"
    generations["rita"] = 4
    with pytest.raises(InvalidToken) as superseded:
        service.verify(token, "tre-api", stored=stored)
    revoked.add(claims.jti)
    with pytest.raises(InvalidToken) as was_revoked:
        service.verify(token, "tre-api", stored=stored)

    assert (superseded.value.reason, was_revoked.value.reason) == (Refusal.SUPERSEDED, Refusal.REVOKED)
    assert asked == [claims.jti] * 3  # asked once per check, instead of the service's two reads


def test_state_read_by_the_caller_is_used_instead_of_the_services_reads() -> None:
    generations, revoked = {"rita": 3}, set[str]()
    service = _service_with_generations(generations, revoked)
    token, claims = service.issue_with_claims("rita", "tre-api", "api", dt.timedelta(minutes=5))
    revoked.add(claims.jti)  # the service's own read would refuse; the caller's state says otherwise

    verified = service.verify(token, "tre-api", stored=lambda _: StoredState(revoked=False, generation=3))

    assert verified.jti == claims.jti


@pytest.mark.parametrize("forge", ["signature", "audience", "expired"])
def test_state_is_not_read_for_a_token_that_fails_its_own_checks(forge: str) -> None:
    clock = Clock()
    service = TokenService(SigningKeyring.generate(), ISSUER, is_revoked=lambda _: False, clock=clock)
    token = issue(service)
    audience = AUDIENCE
    if forge == "signature":
        token = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    elif forge == "audience":
        audience = "another-service"
    else:
        clock.now = T0 + dt.timedelta(hours=1)
    asked: list[Claims] = []

    def stored(seen: Claims) -> StoredState:
        asked.append(seen)
        return StoredState(revoked=False, generation=None)

    with pytest.raises(InvalidToken):
        service.verify(token, audience, stored=stored)
    assert asked == []
