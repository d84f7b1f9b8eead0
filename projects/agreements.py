"""Data access agreements (published versions, signatures) and training records."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from sqlalchemy import select

from projects import permissions as perm
from projects.gate import current_agreement, training_expiry
from projects.kernel import (
    NotFound,
    ProjectError,
    ProjectsKernel,
    _norm_name,
    agreement_hash,
)
from projects.models import (
    AgreementSignature,
    AgreementTemplate,
    Project,
    TrainingRecord,
)
from projects.rules import (
    ACTIVE,
    APPROVED,
    SUSPENDED,
    check_single_line,
)
from tre.core.db import utcnow
from tre.core.identity import User


class AgreementsAndTraining(ProjectsKernel):
    # --- agreements -------------------------------------------------------------------------------

    def publish_agreement(self, actor: Any, title: str, body: str) -> AgreementTemplate:
        """A new current version: everyone must sign it again before further access."""
        title, body = (title or "").strip(), (body or "").strip()
        if not title or not body:
            raise ProjectError("The agreement needs a title and a text")
        check_single_line("agreement title", title)
        with self._tx() as s:
            self._allow(perm.can_publish_agreement(actor), "agreement.publish", actor)
            latest = current_agreement(s)
            content_hash = agreement_hash(title, body)
            if latest is not None and latest.content_hash == content_hash:
                raise ProjectError("This text is the same as the current version")
            template = AgreementTemplate(
                version=(latest.version + 1) if latest else 1,
                title=title[:200],
                body=body,
                content_hash=content_hash,
                published_by=getattr(actor, "id", None),
            )
            s.add(template)
            s.flush()
            self.audit.record(
                s,
                "agreement.publish",
                actor_id=getattr(actor, "id", None),
                target_type="agreement",
                target_id=template.id,
                request_id=self.request_id,
                detail={"version": template.version, "content_hash": content_hash},
            )
            running = s.scalars(select(Project).where(Project.state.in_((APPROVED, ACTIVE, SUSPENDED))))
            for project in running:
                self._notify_users(
                    s,
                    [m.user_id for m in project.active_members],
                    f"Please sign the new agreement: {project.title}",
                    f"Version {template.version} of the data access agreement is published. "
                    f"Sign it on the project page of \u201c{project.title}\u201d to keep access.",
                    "agreement.due",
                    dedupe=f"agreement:{template.id}:{project.id}",
                )
        return template

    def current_agreement(self) -> AgreementTemplate | None:
        return current_agreement(self.session)

    def sign_agreement(self, actor: Any, project_id: str, content_hash: str, signed_name: str) -> AgreementSignature:
        """Sign the current version for this project; ``content_hash`` is the version the person read."""
        with self._tx() as s:
            project = self._project(s, project_id, lock=True)
            self._allow(perm.can_sign(actor, project), "agreement.sign", actor, project)
            if project.state not in (APPROVED, ACTIVE, SUSPENDED):
                raise ProjectError("Agreements are signed once the project is approved")
            template = current_agreement(s)
            if template is None:
                raise ProjectError("No data access agreement has been published yet")
            if content_hash != template.content_hash:
                raise ProjectError(
                    "The agreement has changed since you opened it: read the current version and sign again"
                )
            if _norm_name(signed_name) != _norm_name(actor.display_name):
                raise ProjectError("Type your full name exactly as it appears on your account to sign")
            if s.scalar(
                select(AgreementSignature.id).where(
                    AgreementSignature.template_id == template.id,
                    AgreementSignature.project_id == project.id,
                    AgreementSignature.user_id == actor.id,
                )
            ):
                raise ProjectError("You have already signed this version for this project")
            sig = AgreementSignature(
                template_id=template.id,
                project_id=project.id,
                user_id=actor.id,
                content_hash=template.content_hash,
                signed_name=signed_name.strip()[:200],
            )
            s.add(sig)
            s.flush()
            self._record(
                s,
                "agreement.sign",
                actor,
                project,
                agreement_version=template.version,
                content_hash=template.content_hash,
            )
        return sig

    def signatures(self, project: Project) -> list[AgreementSignature]:
        return list(
            self.session.scalars(
                select(AgreementSignature)
                .where(AgreementSignature.project_id == project.id)
                .order_by(AgreementSignature.signed_at)
            )
        )

    # --- training ---------------------------------------------------------------------------------

    def record_training(
        self,
        actor: Any,
        user_id: str,
        completed_on: dt.date,
        expires_on: dt.date,
        *,
        course: str | None = None,
        reference: str = "",
    ) -> TrainingRecord:
        course = course or self.policy.training_course
        if not isinstance(completed_on, dt.date) or not isinstance(expires_on, dt.date):
            raise ProjectError("Enter the completion and expiry dates")
        if expires_on < completed_on:
            raise ProjectError("The expiry date must be after the completion date")
        if completed_on > utcnow().date():
            raise ProjectError("The completion date cannot be in the future")
        with self._tx() as s:
            self._allow(perm.can_manage_training(actor), "training.record", actor)
            person = s.get(User, user_id) if user_id else None
            if person is None:
                raise NotFound("No such account")
            record = TrainingRecord(
                user_id=person.id,
                course=course[:100],
                completed_on=completed_on,
                expires_on=expires_on,
                reference=(reference or "").strip()[:200],
                recorded_by=getattr(actor, "id", None),
            )
            s.add(record)
            s.flush()
            self.audit.record(
                s,
                "training.record",
                actor_id=getattr(actor, "id", None),
                target_type="user",
                target_id=person.id,
                request_id=self.request_id,
                detail={
                    "course": record.course,
                    "record_id": record.id,
                    "expires_on": expires_on.isoformat(),
                },
            )
        return record

    def import_training(self, actor: Any, csv_text: str) -> int:
        """Import records from CSV lines ``email,completed_on,expires_on[,reference]`` (ISO dates).

        All or nothing: any bad line refuses the whole import and names every bad line.
        """
        rows: list[tuple[str, dt.date, dt.date, str]] = []
        problems: list[str] = []
        for number, row in enumerate(csv.reader(io.StringIO(csv_text or "")), start=1):
            if not row or not any(cell.strip() for cell in row) or row[0].strip().lower() == "email":
                continue
            if len(row) < 3:
                problems.append(f"Line {number}: give an email, a completion date and an expiry date")
                continue
            try:
                completed, expires = dt.date.fromisoformat(row[1].strip()), dt.date.fromisoformat(row[2].strip())
            except ValueError:
                problems.append(f"Line {number}: write dates like 2026-04-30")
                continue
            if expires < completed or completed > utcnow().date():
                problems.append(f"Line {number}: the dates are not possible")
                continue
            reference = row[3].strip() if len(row) > 3 else ""
            rows.append((row[0].strip().lower(), completed, expires, reference))
        if not rows and not problems:
            raise ProjectError("There is nothing to import")
        with self._tx() as s:
            self._allow(perm.can_manage_training(actor), "training.import", actor)
            users = {u.email: u for u in s.scalars(select(User).where(User.email.in_([r[0] for r in rows])))}
            problems += [f"No account for {email}" for email, *_ in rows if email not in users]
            if problems:
                raise ProjectError("Nothing was imported: " + "; ".join(problems))
            for email, completed, expires, reference in rows:
                s.add(
                    TrainingRecord(
                        user_id=users[email].id,
                        course=self.policy.training_course,
                        completed_on=completed,
                        expires_on=expires,
                        reference=reference[:200],
                        recorded_by=getattr(actor, "id", None),
                    )
                )
            self.audit.record(
                s,
                "training.import",
                actor_id=getattr(actor, "id", None),
                request_id=self.request_id,
                detail={"records": len(rows), "user_ids": sorted(users[r[0]].id for r in rows)},
            )
        return len(rows)

    def training_records(self, user_id: str) -> list[TrainingRecord]:
        return list(
            self.session.scalars(
                select(TrainingRecord)
                .where(TrainingRecord.user_id == user_id)
                .order_by(TrainingRecord.expires_on.desc())
            )
        )

    def training_expiry(self, user_id: str) -> dt.date | None:
        return training_expiry(self.session, user_id, self.policy.training_course)
