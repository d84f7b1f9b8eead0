"""What each column of a dataset is, and what an extract may do with it.

A custodian gives every column a role when a source is catalogued; an extract then applies one
transform per approved column. The rules here refuse, before any data is read, the combinations that
would leak identity: a direct identifier can only be tokenised or dropped, free text is dropped unless
a scrub is asked for, and a column with no spec cannot be extracted at all. Whatever role a custodian
gives them, the NHS number column is only tokenised or dropped, and the columns the person index reads
(names, record id, date of birth, postcode) never leave raw (ADR 0068).

Everything is plain data that round-trips through JSON, so the catalogue can store it as is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# What the person index reads from a linked dataset: record_id is required, the rest optional.
LINKAGE_FIELDS = ("record_id", "first_name", "surname", "date_of_birth", "sex", "postcode")


class SchemaError(ValueError):
    """A schema or an approval that the pipeline must refuse."""


class Role(StrEnum):
    DIRECT_IDENTIFIER = "direct_identifier"  # NHS number, name, address, hospital number
    QUASI_IDENTIFIER = "quasi_identifier"  # date of birth, postcode, sex, ethnicity, event dates
    ATTRIBUTE = "attribute"  # everything else that is not free text
    FREE_TEXT = "free_text"  # clinical notes and other prose


class InvalidNhsPolicy(StrEnum):
    """What to do with a row whose NHS number is missing or fails validation."""

    REJECT = "reject"  # drop the row and count it by reason
    SEPARATE_NAMESPACE = "separate_namespace"  # keep it under an ``INVALID-`` token, never linked


class TransformKind(StrEnum):
    KEEP = "keep"
    DROP = "drop"
    NHS_TOKEN = "nhs_token"  # noqa: S105 - per-project token of the NHS number column
    DOB_YEAR = "dob_year"
    DOB_AGE_BAND = "dob_age_band"  # params: reference_date (ISO), width (default 5), top (default 90)
    DATE_SHIFT = "date_shift"  # params: max_days (default 180)
    DAYS_FROM_INDEX = "days_from_index"  # params: index_column
    POSTCODE_DISTRICT = "postcode_district"
    POSTCODE_SECTOR = "postcode_sector"
    SCRUB_TEXT = "scrub_text"  # params: identifier_columns
    ID_TOKEN = "id_token"  # noqa: S105 - per-project token of a local identifier; params: namespace
    MEASUREMENT = "measurement"  # numbers with censoring markers or pairs, as text; other text missing


# Which transforms each role may take; anything else is refused.
_ALLOWED: dict[Role, frozenset[TransformKind]] = {
    Role.DIRECT_IDENTIFIER: frozenset({TransformKind.NHS_TOKEN, TransformKind.ID_TOKEN, TransformKind.DROP}),
    Role.QUASI_IDENTIFIER: frozenset(TransformKind) - {TransformKind.NHS_TOKEN, TransformKind.SCRUB_TEXT},
    Role.ATTRIBUTE: frozenset(TransformKind) - {TransformKind.NHS_TOKEN, TransformKind.SCRUB_TEXT},
    Role.FREE_TEXT: frozenset({TransformKind.DROP, TransformKind.SCRUB_TEXT}),
}
_DEFAULT: dict[Role, TransformKind] = {
    Role.DIRECT_IDENTIFIER: TransformKind.DROP,
    Role.QUASI_IDENTIFIER: TransformKind.KEEP,
    Role.ATTRIBUTE: TransformKind.KEEP,
    Role.FREE_TEXT: TransformKind.DROP,
}
_DEFAULT_OUTPUT_NAME = {TransformKind.NHS_TOKEN: "patient_token"}

# What the columns a person is identified by may become, whatever a custodian chooses (ADR 0068): the
# NHS number only its token or nothing; a name or a record id a token or nothing; a date of birth and a
# postcode only generalised. One wrong choice would otherwise put the raw value in every extract.
_NHS_NUMBER_RULES = frozenset({TransformKind.NHS_TOKEN, TransformKind.DROP})
_IDENTITY_RULES: dict[str, tuple[frozenset[Role], frozenset[TransformKind], str]] = {
    "record_id": (frozenset({Role.DIRECT_IDENTIFIER}),
                  frozenset({TransformKind.NHS_TOKEN, TransformKind.ID_TOKEN, TransformKind.DROP}),
                  "a direct identifier, tokenised or dropped"),
    "first_name": (frozenset({Role.DIRECT_IDENTIFIER}), frozenset({TransformKind.ID_TOKEN, TransformKind.DROP}),
                   "a direct identifier, tokenised or dropped"),
    "surname": (frozenset({Role.DIRECT_IDENTIFIER}), frozenset({TransformKind.ID_TOKEN, TransformKind.DROP}),
                "a direct identifier, tokenised or dropped"),
    "date_of_birth": (frozenset({Role.QUASI_IDENTIFIER, Role.DIRECT_IDENTIFIER}),
                      frozenset({TransformKind.DOB_AGE_BAND, TransformKind.DOB_YEAR, TransformKind.DATE_SHIFT,
                                 TransformKind.DROP}),
                      "a quasi-identifier given as an age band, a year or a shifted date, or dropped"),
    "postcode": (frozenset({Role.QUASI_IDENTIFIER, Role.DIRECT_IDENTIFIER}),
                 frozenset({TransformKind.POSTCODE_DISTRICT, TransformKind.POSTCODE_SECTOR, TransformKind.DROP}),
                 "a quasi-identifier given as its district or sector, or dropped"),
}


@dataclass(frozen=True)
class Transform:
    kind: TransformKind
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "params": dict(self.params)}


@dataclass(frozen=True)
class ColumnSpec:
    """One source column: its role, its transform, and checks for the data-quality report."""

    name: str
    role: Role
    transform: Transform | None = None
    output_name: str | None = None
    valid_pattern: str | None = None  # a regex for codes (e.g. ICD-10); misses count as invalid codes

    @property
    def effective_transform(self) -> Transform:
        return self.transform or Transform(_DEFAULT[self.role])

    @property
    def effective_output_name(self) -> str:
        return self.output_name or _DEFAULT_OUTPUT_NAME.get(self.effective_transform.kind, self.name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "role": str(self.role)}
        if self.transform is not None:
            out["transform"] = self.transform.to_dict()
        if self.output_name is not None:
            out["output_name"] = self.output_name
        if self.valid_pattern is not None:
            out["valid_pattern"] = self.valid_pattern
        return out


@dataclass(frozen=True)
class DatasetSchema:
    """A catalogued source: its columns, which one holds the NHS number, and the invalid-number policy."""

    name: str
    columns: tuple[ColumnSpec, ...]
    nhs_number_column: str | None = None
    invalid_nhs_policy: InvalidNhsPolicy = InvalidNhsPolicy.REJECT
    # Which columns the person index reads (LINKAGE_FIELDS -> column); None: the dataset is not linked.
    linkage_columns: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise SchemaError("column names must be unique")
        if self.nhs_number_column is not None and self.nhs_number_column not in names:
            raise SchemaError("the NHS number column is not in the schema")
        if self.linkage_columns is not None:
            fields = dict(self.linkage_columns)
            unknown_fields = set(fields) - set(LINKAGE_FIELDS)
            if unknown_fields:
                raise SchemaError(f"unknown linkage fields: {sorted(unknown_fields)}")
            if "record_id" not in fields:
                raise SchemaError("a linked dataset needs a record_id column")
            missing = sorted(set(fields.values()) - set(names))
            if missing:
                raise SchemaError(f"linkage columns not in the schema: {missing}")
            object.__setattr__(self, "linkage_columns", dict(sorted(fields.items())))
        for column in self.columns:
            self._check_column(column)
        self._check_identity_columns()

    def _check_identity_columns(self) -> None:
        """The NHS number and the columns the person index reads never leave raw (ADR 0068)."""
        if self.nhs_number_column is not None:
            spec = self.column(self.nhs_number_column)
            if spec.role is not Role.DIRECT_IDENTIFIER or spec.effective_transform.kind not in _NHS_NUMBER_RULES:
                raise SchemaError(f"column {spec.name!r} holds the NHS number: it must be a direct identifier, "
                                  "tokenised (nhs_token) or dropped")
        for linkage_field, name in (self.linkage_columns or {}).items():
            if linkage_field not in _IDENTITY_RULES:
                continue
            roles, kinds, what = _IDENTITY_RULES[linkage_field]
            spec = self.column(name)
            if spec.role not in roles or spec.effective_transform.kind not in kinds:
                raise SchemaError(f"column {name!r} is the {linkage_field.replace('_', ' ')} the person index "
                                  f"reads: it must be {what}")

    def _check_column(self, column: ColumnSpec) -> None:
        kind = column.effective_transform.kind
        if kind not in _ALLOWED[column.role]:
            raise SchemaError(f"column {column.name!r}: a {column.role} cannot take the {kind} transform")
        if kind is TransformKind.NHS_TOKEN and column.name != self.nhs_number_column:
            raise SchemaError(f"column {column.name!r}: only the NHS number column can be tokenised")
        params = column.effective_transform.params
        if kind is TransformKind.DAYS_FROM_INDEX and params.get("index_column") not in self.column_names:
            raise SchemaError(f"column {column.name!r}: days_from_index needs an index_column in the schema")
        if kind is TransformKind.SCRUB_TEXT:
            missing = set(params.get("identifier_columns", ())) - set(self.column_names)
            if missing:
                raise SchemaError(f"column {column.name!r}: scrub_text names unknown identifier columns")
        if kind is TransformKind.DATE_SHIFT and self.nhs_number_column is None:
            raise SchemaError(f"column {column.name!r}: a per-patient date shift needs an NHS number column")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise SchemaError(f"unknown column {name!r}")

    def plan(self, approved_columns: Iterable[str]) -> list[ColumnSpec]:
        """The approved columns that produce output, in schema order; refuses unknown names.

        Deny by default: a column the custodian has not described cannot be approved into an extract.
        """
        approved = list(dict.fromkeys(approved_columns))
        unknown = [a for a in approved if a not in self.column_names]
        if unknown:
            raise SchemaError(f"approved columns not in the schema: {sorted(unknown)}")
        chosen = [c for c in self.columns if c.name in approved]
        out = [c for c in chosen if c.effective_transform.kind is not TransformKind.DROP]
        names = [c.effective_output_name for c in out]
        if len(set(names)) != len(names):
            raise SchemaError("two approved columns would have the same output name")
        return out

    def source_columns(self, plan: Iterable[ColumnSpec]) -> list[str]:
        """Every source column the plan must read: outputs, the NHS number, index and identifier columns."""
        needed: list[str] = []
        if self.nhs_number_column:
            needed.append(self.nhs_number_column)
        for c in plan:
            needed.append(c.name)
            params = c.effective_transform.params
            if c.effective_transform.kind is TransformKind.DAYS_FROM_INDEX:
                needed.append(params["index_column"])
            if c.effective_transform.kind is TransformKind.SCRUB_TEXT:
                needed.extend(params.get("identifier_columns", ()))
        return list(dict.fromkeys(needed))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "nhs_number_column": self.nhs_number_column,
            "invalid_nhs_policy": str(self.invalid_nhs_policy),
            "columns": [c.to_dict() for c in self.columns],
        }
        if self.linkage_columns is not None:  # absent, not null, so older schemas keep their fingerprint
            out["linkage_columns"] = dict(self.linkage_columns)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSchema:
        try:
            columns = tuple(
                ColumnSpec(
                    name=c["name"],
                    role=Role(c["role"]),
                    transform=(
                        Transform(TransformKind(c["transform"]["kind"]), dict(c["transform"].get("params", {})))
                        if c.get("transform")
                        else None
                    ),
                    output_name=c.get("output_name"),
                    valid_pattern=c.get("valid_pattern"),
                )
                for c in data["columns"]
            )
            return cls(
                name=data["name"],
                columns=columns,
                nhs_number_column=data.get("nhs_number_column"),
                invalid_nhs_policy=InvalidNhsPolicy(data.get("invalid_nhs_policy", "reject")),
                linkage_columns=data.get("linkage_columns"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError(f"malformed schema: {exc}") from None

    @classmethod
    def problem_of(cls, data: Mapping[str, Any] | None) -> str | None:
        """Why a stored schema cannot be used (a schema confirmed before a rule was added), or None.

        Pages show it instead of failing; the extract service refuses such a dataset."""
        if not data:
            return None
        try:
            cls.from_dict(data)
        except SchemaError as exc:
            return str(exc)
        return None

    def fingerprint(self) -> str:
        """A hash of the schema, so a resumed extract can prove it runs the same plan."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
