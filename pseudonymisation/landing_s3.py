"""Deliveries named under an S3 prefix: the landing area as a bucket instead of a folder.

A custodian names an object by its path under the configured prefix, with the same rules as a file
in the landing folder (``landing.check_name``: relative, no ``..``, a known suffix), so a name can
never reach outside the prefix. The object is streamed, never held whole: the delivery job seals it
into the identifiable zone as it reads (``zone.seal_into_zone``). Any boto3-style client will do
(``get_object``, ``head_object``); which client, endpoint and credentials is the edge's business.
Pure: no Flask, no SQLAlchemy.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, BinaryIO

from pseudonymisation.landing import LandingError, check_name

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(((response or {}).get("Error") or {}).get("Code", "")) if isinstance(response, dict) else ""


class S3Landing:
    """The landing area in ``bucket`` under ``prefix``."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        if not bucket:
            raise ValueError("an S3 landing area needs a bucket")
        self._client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def key(self, name: str) -> tuple[str, PurePosixPath]:
        path = check_name(name)
        return (f"{self.prefix}/{path}" if self.prefix else str(path)), path

    def check(self, name: str) -> PurePosixPath:
        """The name as delivered, once the object is known to be there."""
        key, path = self.key(name)
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - the client's own error types are not ours to import
            raise self._refusal(exc) from None
        return path

    def open(self, name: str) -> BinaryIO:
        """A stream of the object's bytes; the caller closes it."""
        key, _ = self.key(name)
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except Exception as exc:  # noqa: BLE001
            raise self._refusal(exc) from None

    @staticmethod
    def _refusal(exc: Exception) -> LandingError:
        if _code(exc) in _MISSING:
            return LandingError("No such file under the landing prefix")
        # The client's message may carry the endpoint or request ids; say only what kind of fault.
        return LandingError(f"The landing bucket could not be read ({type(exc).__name__})")

    def __repr__(self) -> str:
        return f"S3Landing(bucket={self.bucket!r}, prefix={self.prefix!r})"


__all__ = ["S3Landing"]
