"""How secrets about people are stored: passwords and recovery codes as argon2id, reset links as
SHA-256 of a 256-bit random value; checks that never raise and take the same time for a miss."""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verifying against this keeps a sign-in for an unknown email as slow as one for a known email.
DUMMY_HASH = hasher.hash(secrets.token_urlsafe(16))
# Recovery codes (48 random bits) are salted and stretched too (ASVS V6.5.2), with OWASP's minimum
# argon2id cost (19 MiB, 2 passes): a wrong code is checked against up to ten of them.
code_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def verify_quietly(password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def recovery_code_matches(stored: str, code: str) -> bool:
    if stored.startswith("$argon2"):
        return verify_quietly_with(code_hasher, stored, code)
    # A code made before recovery codes were hashed with argon2id: plain SHA-256 of the code.
    return secrets.compare_digest(stored, sha256_hex(code))


def verify_quietly_with(hasher: PasswordHasher, stored: str, value: str) -> bool:
    try:
        return hasher.verify(stored, value)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
