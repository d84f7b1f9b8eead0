"""Opt-out lists in the control plane: custodians load them, extracts apply them.

A list has a name and a scope: every source (the national data opt-out) or one catalogued dataset
(a provider's local objections). Each upload of a name is a new version that replaces the one in
force. An upload is checked whole before anything is kept: one line that is not a valid NHS
number refuses the upload, and the refusal names the lines, never what they held.

Where the numbers live: only in the encrypted file store, as a file that starts with a random
salt. The database holds the store's name for that file (a hash of salt and numbers, so it says
nothing about the numbers), the counts, and a fingerprint that is an HMAC keyed by the salt, which
is what manifests show. Logs and audit events carry names, versions and counts.

The pure matching is ``pseudonymisation.optouts``; this module turns the stored versions into its
``OptOutList`` objects for the extract service, and says which lists apply to which dataset and
which the project is exempt from (``OptOutPlan``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from projects.models import Dataset, OptOutExemption
from projects.services import project_optout_exemptions
from pseudonymisation.models import OptOutListVersion
from pseudonymisation.optouts import OptOutList, UploadProblem, parse_upload
from tre.core.audit import DENIED, AuditLog
from tre.core.db import transaction
from tre.core.filestore import FileStore, FileStoreError, FileTooLarge
from tre.core.identity import User
from tre.core.permissions import Permission, has_permission

FILE_FORMAT = "tre-optout-list/1"
SALT_BYTES = 16
MAX_PROBLEMS_SHOWN = 20
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class OptOutError(Exception):
    """A request about opt-out lists that is refused; the message is safe to show and holds no number."""


class UploadRefused(OptOutError):
    """The upload held lines that are not valid NHS numbers; nothing was kept."""

    def __init__(self, problems: list[UploadProblem], lines_read: int) -> None:
        self.problems = problems
        self.lines_read = lines_read
        shown = "; ".join(f"line {p.line}: {p.reason}" for p in problems[:MAX_PROBLEMS_SHOWN])
        more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        super().__init__(
            f"Nothing was loaded: {len(problems)} of {lines_read} lines are not valid NHS numbers: {shown}{more}. "
            "Correct or remove those lines and upload the whole list again."
        )


def _file_content(salt: bytes, numbers: list[str]) -> bytes:
    return (f"{FILE_FORMAT}\n{salt.hex()}\n" + "".join(f"{n}\n" for n in numbers)).encode()


def _read_file(content: bytes) -> tuple[bytes, list[str]]:
    lines = content.decode().splitlines()
    if len(lines) < 2 or lines[0] != FILE_FORMAT:
        raise OptOutError("A stored opt-out list is not in the expected format")
    return bytes.fromhex(lines[1]), lines[2:]


@dataclass(frozen=True)
class AppliedList:
    """One list version that applies to one dataset of an extract, and whether the project is exempt."""

    version: OptOutListVersion
    exemption: OptOutExemption | None

    def describe(self) -> dict[str, Any]:
        v = self.version
        entry: dict[str, Any] = {
            "name": v.name,
            "version": v.version,
            "fingerprint": v.fingerprint,
            "scope": "dataset" if v.dataset_id else "all sources",
            "numbers": v.number_count,
            "loaded_at": v.loaded_at.isoformat(),
        }
        if self.exemption is not None:
            entry["exempt"] = {
                "basis": self.exemption.basis,
                "decided_by": self.exemption.decided_by,
                "decided_at": self.exemption.decided_at.isoformat(),
            }
        return entry


@dataclass
class OptOutPlan:
    """Which list versions apply to each dataset of one project's extract, and its exemptions."""

    by_dataset: dict[str, list[AppliedList]] = field(default_factory=dict)
    no_nhs_number: set[str] = field(default_factory=set)  # datasets a list cannot be applied to

    def state(self) -> list[Any]:
        """What an extract's plan hash must cover: a new version or exemption makes a new extract."""
        return [
            [name, [[a.version.id, a.exemption is not None] for a in applied]]
            for name, applied in sorted(self.by_dataset.items())
        ]

    def exempt_names(self, dataset: str) -> list[str]:
        return sorted(a.version.name for a in self.by_dataset.get(dataset, []) if a.exemption is not None)

    def summary(self, manifests: dict[str, Any]) -> dict[str, Any]:
        """The extract manifest's ``optouts`` section: per dataset, each list with its version,
        fingerprint and what it removed, or — when exempt — what it would have removed and why."""
        out: dict[str, Any] = {}
        for dataset, applied in sorted(self.by_dataset.items()):
            section = (manifests.get(dataset) or {}).get("optouts", {})
            removed = {e["name"]: e["rows_removed"] for e in section.get("applied", [])}
            kept = {e["name"]: e["rows_not_removed"] for e in section.get("exempt", [])}
            rows = []
            for a in applied:
                entry = a.describe()
                if dataset in self.no_nhs_number:
                    entry["status"] = "not applicable: the dataset has no NHS number column"
                elif a.exemption is not None:
                    entry["status"] = "skipped: the project is exempt"
                    entry["rows_not_removed"] = kept.get(a.version.name, 0)
                else:
                    entry["status"] = "applied"
                    entry["rows_removed"] = removed.get(a.version.name, 0)
                rows.append(entry)
            out[dataset] = rows
        return out


@dataclass
class OptOutLists:
    session: Session
    audit: AuditLog
    files: FileStore
    request_id: str | None = None

    # --- loading ------------------------------------------------------------------------------------

    def load(
        self,
        actor: User,
        name: str,
        content: str | bytes,
        *,
        dataset: str | None = None,
        description: str = "",
    ) -> OptOutListVersion:
        """Load a new version of the named list (replacing the one in force), or refuse and keep nothing.

        ``dataset`` (a catalogue name or id) makes the list a restriction of that source only; a
        name keeps the scope it was first loaded with.
        """
        if not has_permission(actor, Permission.OPTOUT_MANAGE):
            with transaction(self.session) as s:
                self.audit.record(s, "optout.load", actor_id=getattr(actor, "id", None), outcome=DENIED,
                                  request_id=self.request_id, detail={"reason": "missing permission"})
            raise OptOutError("You do not have permission to load opt-out lists")
        name = (name or "").strip().lower()
        if not name or len(name) > 100 or not set(name) <= _NAME_CHARS:
            raise OptOutError("Name the list with lower-case letters, digits, dashes and underscores")
        scope = self._dataset(dataset) if dataset and dataset.strip() else None
        if isinstance(content, bytes):
            try:
                content = content.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise OptOutError("The file is not UTF-8 text: upload a text or CSV file of NHS numbers") from None
        parsed = parse_upload(content)
        if parsed.problems:
            raise UploadRefused(parsed.problems, parsed.lines_read)
        if not parsed.numbers:
            raise OptOutError("The file holds no NHS numbers")
        self._check_scope(self.current_version(name), name, scope)  # before anything is written
        salt = secrets.token_bytes(SALT_BYTES)
        try:
            sha = self.files.put(_file_content(salt, parsed.numbers))
        except FileTooLarge as exc:
            raise OptOutError(f"The list is larger than the file store accepts ({exc.limit} bytes)") from None
        fingerprint = OptOutList.from_numbers(name, parsed.numbers, salt=salt).fingerprint()
        try:
            with transaction(self.session) as s:
                current = self.current_version(name)
                self._check_scope(current, name, scope)
                row = OptOutListVersion(
                    name=name,
                    version=(current.version if current else 0) + 1,
                    dataset_id=scope.id if scope else None,
                    description=(description or "").strip()[:2000],
                    file_sha256=sha,
                    fingerprint=fingerprint,
                    number_count=len(parsed.numbers),
                    duplicates=parsed.duplicates,
                    loaded_by=actor.id,
                )
                s.add(row)
                s.flush()
                self.audit.record(
                    s, "optout.load", actor_id=actor.id, target_type="optout_list", target_id=row.id,
                    request_id=self.request_id,
                    detail={"name": name, "version": row.version, "numbers": row.number_count,
                            "duplicates": row.duplicates, "dataset": row.dataset_id},
                )
        except IntegrityError:
            # Two versions of one list loaded at the same moment: the unique (name, version) keeps one.
            raise OptOutError(f"Another version of {name} was loaded at the same time; load yours again") from None
        return row

    @staticmethod
    def _check_scope(current: OptOutListVersion | None, name: str, scope: Dataset | None) -> None:
        if current is not None and current.dataset_id != (scope.id if scope else None):
            raise OptOutError(
                f"The list {name} was loaded for {'one dataset' if current.dataset_id else 'every source'}; "
                "a new version must keep that scope (use another name for a different scope)"
            )

    def _dataset(self, ref: str) -> Dataset:
        ref = ref.strip()
        ds = self.session.get(Dataset, ref) or self.session.scalar(select(Dataset).where(Dataset.name == ref))
        if ds is None:
            raise OptOutError("No such dataset in the catalogue")
        return ds

    # --- reading ------------------------------------------------------------------------------------

    def current_version(self, name: str) -> OptOutListVersion | None:
        return self.session.scalar(
            select(OptOutListVersion)
            .where(OptOutListVersion.name == name)
            .order_by(OptOutListVersion.version.desc())
            .limit(1)
        )

    def current(self) -> list[OptOutListVersion]:
        """The version in force of every list, by name."""
        return current_versions(self.session)

    def history(self, name: str) -> list[OptOutListVersion]:
        return list(
            self.session.scalars(
                select(OptOutListVersion)
                .where(OptOutListVersion.name == name)
                .order_by(OptOutListVersion.version.desc())
            )
        )

    def read(self, version: OptOutListVersion) -> OptOutList:
        """The numbers of one version, for the pipeline only; never shown, logged or returned by a page."""
        try:
            salt, numbers = _read_file(self.files.get(version.file_sha256))
        except FileStoreError:
            raise OptOutError(
                f"The stored opt-out list {version.name} (version {version.version}) cannot be read"
            ) from None
        optout = OptOutList.from_numbers(version.name, numbers, version=str(version.version), salt=salt)
        if optout.fingerprint() != version.fingerprint:
            raise OptOutError(f"The stored opt-out list {version.name} does not match its fingerprint")
        return optout

    def plan(self, project_id: str, datasets: list[tuple[Dataset, bool]]) -> OptOutPlan:
        """The lists in force for each dataset (``(dataset, has an NHS number column)``) of a
        project's extract: every list of scope "all sources", plus the dataset's own."""
        exemptions = {e.list_name: e for e in project_optout_exemptions(self.session, project_id)}
        versions = self.current()
        result = OptOutPlan()
        for ds, has_nhs_number in datasets:
            applied = [
                AppliedList(v, exemptions.get(v.name)) for v in versions if v.dataset_id in (None, ds.id)
            ]
            result.by_dataset[ds.name] = applied
            if applied and not has_nhs_number:
                result.no_nhs_number.add(ds.name)
        return result


def current_versions(session: Session) -> list[OptOutListVersion]:
    latest = (
        select(OptOutListVersion.name, func.max(OptOutListVersion.version).label("version"))
        .group_by(OptOutListVersion.name)
        .subquery()
    )
    return list(
        session.scalars(
            select(OptOutListVersion)
            .join(latest, (OptOutListVersion.name == latest.c.name) & (OptOutListVersion.version == latest.c.version))
            .order_by(OptOutListVersion.name)
        )
    )
