"""Authorisation as data: permissions, the roles that grant them, and one ``has_permission``.

Site-wide roles are held by a person (an output checker, a DAC chair...). Project roles (member,
principal investigator) come from project memberships and are checked by the projects package
through the access gate; this module answers only "may this person do this kind of thing at all".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Protocol


class Permission(enum.StrEnum):
    # Researchers
    PROJECT_APPLY = "project.apply"
    PROJECT_VIEW_OWN = "project.view_own"
    OUTPUT_SUBMIT = "output.submit"
    CATALOGUE_BROWSE = "catalogue.browse"
    # Data access committee
    APPLICATION_REVIEW = "application.review"
    APPLICATION_DECIDE = "application.decide"
    APPLICATION_ASSIGN = "application.assign"
    # Record that a project's legal basis exempts it from a named opt-out list (a committee decision).
    OPTOUT_EXEMPT = "optout.exempt"
    # Output checking
    OUTPUT_REVIEW = "output.review"
    # Data custodians
    DATASET_MANAGE = "dataset.manage"
    EXTRACT_MANAGE = "extract.manage"
    # Load opt-out lists (the national data opt-out, a source's own restrictions).
    OPTOUT_MANAGE = "optout.manage"
    # Governed re-identification (for example recalling a patient for care): requested by a
    # custodian, approved by two other people.
    REIDENTIFY_REQUEST = "reidentify.request"
    REIDENTIFY_APPROVE = "reidentify.approve"
    # The person index: run linkage and read its quality figures (custodians).
    LINKAGE_RUN = "linkage.run"
    # Clerical review of the uncertain band: see candidate pairs' identifiers and decide (linkage officers).
    LINKAGE_REVIEW = "linkage.review"
    # Administration
    USER_MANAGE = "user.manage"
    TRAINING_MANAGE = "training.manage"
    AGREEMENT_MANAGE = "agreement.manage"
    JOB_VIEW = "job.view"
    # Assurance
    AUDIT_VIEW = "audit.view"
    AUDIT_EXPORT = "audit.export"


class Role(enum.StrEnum):
    RESEARCHER = "researcher"
    DAC_MEMBER = "dac_member"
    DAC_CHAIR = "dac_chair"
    OUTPUT_CHECKER = "output_checker"
    DATA_CUSTODIAN = "data_custodian"
    ADMINISTRATOR = "administrator"
    AUDITOR = "auditor"
    LINKAGE_OFFICER = "linkage_officer"


ROLE_LABELS: dict[Role, str] = {
    Role.RESEARCHER: "Researcher",
    Role.DAC_MEMBER: "Data access committee member",
    Role.DAC_CHAIR: "Data access committee chair",
    Role.OUTPUT_CHECKER: "Output checker",
    Role.DATA_CUSTODIAN: "Data custodian",
    Role.ADMINISTRATOR: "Administrator",
    Role.AUDITOR: "Auditor",
    Role.LINKAGE_OFFICER: "Linkage officer",
}

# Separation of duties: roles one person never holds together. A linkage officer sees identifiers
# of candidate pairs; a researcher or an output checker sees the same people's pseudonymised data,
# so holding both would let one person re-identify. Site-wide, which is stricter than "on the same
# data": every linked dataset is in the one person index.
INCOMPATIBLE_ROLES: frozenset[frozenset[Role]] = frozenset(
    {
        frozenset({Role.LINKAGE_OFFICER, Role.RESEARCHER}),
        frozenset({Role.LINKAGE_OFFICER, Role.OUTPUT_CHECKER}),
    }
)


def role_conflicts(roles: Iterable[str]) -> list[tuple[str, str]]:
    """The pairs of ``roles`` one person may not hold together (sorted), empty when none."""
    held = {r for r in roles}
    return sorted(
        tuple(sorted(r.value for r in pair))  # type: ignore[misc]
        for pair in INCOMPATIBLE_ROLES
        if {r.value for r in pair} <= held
    )

P = Permission
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.RESEARCHER: frozenset({P.PROJECT_APPLY, P.PROJECT_VIEW_OWN, P.OUTPUT_SUBMIT, P.CATALOGUE_BROWSE}),
    Role.DAC_MEMBER: frozenset({P.APPLICATION_REVIEW, P.CATALOGUE_BROWSE}),
    Role.DAC_CHAIR: frozenset(
        {
            P.APPLICATION_REVIEW,
            P.APPLICATION_DECIDE,
            P.APPLICATION_ASSIGN,
            P.CATALOGUE_BROWSE,
            P.REIDENTIFY_APPROVE,
            P.OPTOUT_EXEMPT,
        }
    ),
    Role.OUTPUT_CHECKER: frozenset({P.OUTPUT_REVIEW}),
    Role.DATA_CUSTODIAN: frozenset(
        {
            P.DATASET_MANAGE,
            P.EXTRACT_MANAGE,
            P.OPTOUT_MANAGE,
            P.CATALOGUE_BROWSE,
            P.JOB_VIEW,
            P.REIDENTIFY_REQUEST,
            P.REIDENTIFY_APPROVE,
            P.LINKAGE_RUN,
        }
    ),
    # Administrators manage people, not data: they hold no data or review permission by default.
    Role.ADMINISTRATOR: frozenset({P.USER_MANAGE, P.TRAINING_MANAGE, P.AGREEMENT_MANAGE, P.JOB_VIEW}),
    Role.AUDITOR: frozenset({P.AUDIT_VIEW, P.AUDIT_EXPORT}),
    Role.LINKAGE_OFFICER: frozenset({P.LINKAGE_REVIEW}),
}


class HasRoles(Protocol):
    @property
    def role_names(self) -> Iterable[str]: ...

    @property
    def is_active(self) -> bool: ...


def permissions_of(roles: Iterable[str]) -> frozenset[Permission]:
    granted: set[Permission] = set()
    for name in roles:
        try:
            granted |= ROLE_PERMISSIONS[Role(name)]
        except ValueError:
            continue  # an unknown role grants nothing
    return frozenset(granted)


def has_permission(user: HasRoles | None, permission: Permission) -> bool:
    """The one question every route asks. Deny by default: no user, an inactive user or no role means no."""
    if user is None or not user.is_active:
        return False
    roles = list(user.role_names)
    if permission is Permission.LINKAGE_REVIEW and role_conflicts(roles):
        return False  # a conflicting holding, however it arose, grants no clerical review
    return permission in permissions_of(roles)
