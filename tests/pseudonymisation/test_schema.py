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
