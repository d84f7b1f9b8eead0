"""Errors of the identity services; every message is safe to show to the person."""

from __future__ import annotations


class IdentityError(Exception):
    """A request about a person that cannot be carried out; the message is safe to show."""


class AuthenticationFailed(IdentityError):
    pass


class SsoRefused(AuthenticationFailed):
    """A single sign-on that does not open any account; ``reason`` is what the audit log records."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDenied(IdentityError):
    pass
