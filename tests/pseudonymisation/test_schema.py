import pytest

from pseudonymisation.schema import (
    ColumnSpec,
    DatasetSchema,
    InvalidNhsPolicy,
    Role,
    SchemaError,
    Transform,
    TransformKind,
)

from .conftest import ALL_COLUMNS, event_schema


def test_a_direct_identifier_cannot_be_kept():
    with pytest.raises(SchemaError, match="cannot take the keep transform"):
        DatasetSchema("d", (ColumnSpec("surname", Role.DIRECT_IDENTIFIER, Transform(TransformKind.KEEP)),))


def test_only_the_nhs_number_column_can_be_tokenised():
    with pytest.raises(SchemaError, match="only the NHS number column"):
        DatasetSchema(
            "d",
            (
                ColumnSpec("nhs", Role.DIRECT_IDENTIFIER),
                ColumnSpec("hospital_number", Role.DIRECT_IDENTIFIER, Transform(TransformKind.NHS_TOKEN)),
            ),
            nhs_number_column="nhs",
        )


def test_free_text_is_dropped_unless_a_scrub_is_asked_for():
    schema = event_schema()

    outputs = [c.name for c in schema.plan(ALL_COLUMNS)]

    assert "note" not in outputs
    assert schema.column("note").effective_transform.kind is TransformKind.DROP


def test_free_text_cannot_be_kept_raw():
    with pytest.raises(SchemaError):
        DatasetSchema("d", (ColumnSpec("note", Role.FREE_TEXT, Transform(TransformKind.KEEP)),))


def test_an_unknown_approved_column_is_refused():
    with pytest.raises(SchemaError, match="not in the schema"):
        event_schema().plan(["nhs_number", "favourite_colour"])


def test_plan_keeps_only_approved_columns_and_reads_the_nhs_number_for_tokens():
    schema = event_schema()

    plan = schema.plan(["sex", "value"])

    assert [c.name for c in plan] == ["sex", "value"]
    assert schema.source_columns(plan) == ["nhs_number", "sex", "value"]


def test_the_nhs_number_is_output_as_a_patient_token():
    [spec] = event_schema().plan(["nhs_number"])

    assert spec.effective_output_name == "patient_token"


def test_days_from_index_needs_a_known_index_column():
    with pytest.raises(SchemaError, match="index_column"):
        DatasetSchema("d", (ColumnSpec("event", Role.QUASI_IDENTIFIER, Transform(TransformKind.DAYS_FROM_INDEX, {})),))


def test_schema_round_trips_through_a_dict_and_keeps_its_fingerprint():
    schema = event_schema(InvalidNhsPolicy.SEPARATE_NAMESPACE)

    again = DatasetSchema.from_dict(schema.to_dict())

    assert again == schema
    assert again.fingerprint() == schema.fingerprint()


def test_a_malformed_schema_dict_is_a_schema_error():
    with pytest.raises(SchemaError, match="malformed"):
        DatasetSchema.from_dict({"name": "d", "columns": [{"name": "x", "role": "secret_sauce"}]})


def test_duplicate_output_names_are_refused():
    schema = DatasetSchema(
        "d",
        (ColumnSpec("a", Role.ATTRIBUTE, output_name="x"), ColumnSpec("b", Role.ATTRIBUTE, output_name="x")),
    )

    with pytest.raises(SchemaError, match="same output name"):
        schema.plan(["a", "b"])


# --- the NHS number and the columns the person index reads never leave raw (ADR 0068) ------------

_EVERY_CHOICE = [(role, kind) for role in Role for kind in TransformKind]


def _with_nhs_column(role: Role, kind: TransformKind) -> DatasetSchema:
    params = {"index_column": "seen_on"} if kind is TransformKind.DAYS_FROM_INDEX else {}
    return DatasetSchema(
        "d",
        (ColumnSpec("nhs", role, Transform(kind, params)), ColumnSpec("seen_on", Role.QUASI_IDENTIFIER)),
        nhs_number_column="nhs",
    )


@pytest.mark.parametrize(("role", "kind"), _EVERY_CHOICE, ids=[f"{r}-{k}" for r, k in _EVERY_CHOICE])
def test_the_nhs_number_column_is_only_ever_tokenised_or_dropped(role, kind):
    allowed = role is Role.DIRECT_IDENTIFIER and kind in {TransformKind.NHS_TOKEN, TransformKind.DROP}

    if allowed:
        assert _with_nhs_column(role, kind).column("nhs").effective_transform.kind is kind
    else:
        with pytest.raises(SchemaError, match="column 'nhs'"):
            _with_nhs_column(role, kind)


def test_an_nhs_number_column_kept_as_an_attribute_is_refused_by_name():
    with pytest.raises(SchemaError, match="column 'nhs' holds the NHS number: it must be a direct identifier, "
                                          r"tokenised \(nhs_token\) or dropped"):
        _with_nhs_column(Role.ATTRIBUTE, TransformKind.KEEP)


_TOKEN_OR_DROP = {(Role.DIRECT_IDENTIFIER, TransformKind.ID_TOKEN), (Role.DIRECT_IDENTIFIER, TransformKind.DROP)}
_GENERALISED = {
    "date_of_birth": {TransformKind.DOB_AGE_BAND, TransformKind.DOB_YEAR, TransformKind.DATE_SHIFT},
    "postcode": {TransformKind.POSTCODE_DISTRICT, TransformKind.POSTCODE_SECTOR},
}
# What each linkage field's column may be; anything else a role allows is refused.
_LINKAGE_ALLOWED = {
    "record_id": _TOKEN_OR_DROP,
    "first_name": _TOKEN_OR_DROP,
    "surname": _TOKEN_OR_DROP,
    **{
        field: {(role, kind) for role in (Role.QUASI_IDENTIFIER, Role.DIRECT_IDENTIFIER)
                for kind in kinds | {TransformKind.DROP}}
        for field, kinds in _GENERALISED.items()
    },
}


def _linked(field: str, role: Role, kind: TransformKind, *, linked: bool = True) -> DatasetSchema:
    params = {"index_column": "seen_on"} if kind is TransformKind.DAYS_FROM_INDEX else {}
    links = {"record_id": "rid"} | {field: "col"} if linked else None
    return DatasetSchema(
        "d",
        (
            ColumnSpec("nhs", Role.DIRECT_IDENTIFIER, Transform(TransformKind.NHS_TOKEN)),
            ColumnSpec("rid", Role.DIRECT_IDENTIFIER, Transform(TransformKind.ID_TOKEN)),
            ColumnSpec("seen_on", Role.QUASI_IDENTIFIER),
            ColumnSpec("col", role, Transform(kind, params)),
        ),
        nhs_number_column="nhs",
        linkage_columns=links,
    )


def _any_column_may(role: Role, kind: TransformKind) -> bool:
    try:
        _linked("sex", role, kind, linked=False)
    except SchemaError:
        return False  # refused for any column by the role's own rules
    return True


_LINKAGE_CASES = [(field, role, kind) for field in _LINKAGE_ALLOWED for role, kind in _EVERY_CHOICE
                  if _any_column_may(role, kind)]


@pytest.mark.parametrize(("field", "role", "kind"), _LINKAGE_CASES,
                         ids=[f"{f}-{r}-{k}" for f, r, k in _LINKAGE_CASES])
def test_a_column_the_person_index_reads_is_never_extracted_raw(field, role, kind):
    if (role, kind) in _LINKAGE_ALLOWED[field]:
        assert _linked(field, role, kind).linkage_columns[field] == "col"
    else:
        with pytest.raises(SchemaError, match=f"column 'col' is the {field.replace('_', ' ')} the person index"):
            _linked(field, role, kind)


def test_sex_read_by_the_person_index_may_be_kept():
    assert _linked("sex", Role.QUASI_IDENTIFIER, TransformKind.KEEP).column("col").effective_transform.kind is (
        TransformKind.KEEP)


def test_a_name_kept_raw_says_it_must_be_tokenised_or_dropped():
    with pytest.raises(SchemaError, match="'col' is the surname the person index reads: it must be a direct "
                                          "identifier, tokenised or dropped"):
        _linked("surname", Role.ATTRIBUTE, TransformKind.KEEP)


def test_a_stored_schema_that_breaks_a_rule_is_described_not_raised():
    broken = _with_nhs_column(Role.DIRECT_IDENTIFIER, TransformKind.NHS_TOKEN).to_dict()
    broken["columns"][0] = {"name": "nhs", "role": "attribute", "transform": {"kind": "keep", "params": {}}}

    assert "'nhs' holds the NHS number" in (DatasetSchema.problem_of(broken) or "")
    with pytest.raises(SchemaError, match="holds the NHS number"):
        DatasetSchema.from_dict(broken)
    assert DatasetSchema.problem_of(event_schema().to_dict()) is None
    assert DatasetSchema.problem_of({}) is None  # no schema yet is not a broken one
