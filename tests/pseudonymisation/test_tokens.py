import re

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pseudonymisation import nhs_number, tokens
from pseudonymisation.pipeline import ExtractKeys

from .conftest import valid_nhs_numbers

TOKEN_SHAPE = re.compile(r"T[bcdfghjkmnpqrstv]{32}")


def test_tokens_are_deterministic_within_a_project(linkage_key, project_key):
    numbers = pa.array(valid_nhs_numbers(500))

    first = tokens.tokenise(numbers, linkage_key, project_key)
    second = tokens.tokenise(numbers, linkage_key, project_key)

    assert first.equals(second)
    assert len(set(first.to_pylist())) == 500


def test_tokens_of_two_projects_share_no_value(linkage_key, project_key):
    numbers = pa.array(valid_nhs_numbers(2000))

    ours = set(tokens.tokenise(numbers, linkage_key, project_key).to_pylist())
    theirs = set(tokens.tokenise(numbers, linkage_key, tokens.generate_key()).to_pylist())

    assert ours.isdisjoint(theirs)


def test_tokens_of_two_projects_agree_on_no_position_bits(linkage_key, project_key):
    # Unlinkable means no shared structure either: letter by letter the two projects' tokens for
    # the same patients agree only as often as chance (1 in 16), not more.
    numbers = pa.array(valid_nhs_numbers(2000))
    ours = np.array([list(t) for t in tokens.tokenise(numbers, linkage_key, project_key).to_pylist()])
    theirs = np.array([list(t) for t in tokens.tokenise(numbers, linkage_key, tokens.generate_key()).to_pylist()])

    agreement = (ours[:, 1:] == theirs[:, 1:]).mean()

    assert 0.05 < agreement < 0.075


def test_tokens_never_look_like_nhs_numbers(linkage_key, project_key):
    numbers = pa.array(valid_nhs_numbers(2000))

    result = tokens.tokenise(numbers, linkage_key, project_key).to_pylist()

    assert all(TOKEN_SHAPE.fullmatch(t) for t in result)
    assert not any(re.search(r"\d", t) for t in result)
    assert not any(nhs_number.is_valid(t) for t in result)


def test_tokenise_fast_path_matches_the_two_layers(linkage_key, project_key):
    numbers = pa.array(valid_nhs_numbers(300))

    fused = tokens.tokenise(numbers, linkage_key, project_key)
    layered = tokens.project_tokens(tokens.internal_pseudonyms(numbers, linkage_key), project_key)

    assert fused.equals(layered)


def test_tokenise_distinct_matches_tokenise_on_repeated_values(linkage_key, project_key):
    numbers = pa.array(valid_nhs_numbers(50) * 7)

    assert tokens.tokenise_distinct(numbers, linkage_key, project_key).equals(
        tokens.tokenise(numbers, linkage_key, project_key)
    )


def test_spaced_dashed_and_integer_numbers_get_the_same_token(linkage_key, project_key):
    forms = pa.array(["9434765919", "943 476 5919", "943-476-5919"])

    spelled = tokens.tokenise(forms, linkage_key, project_key).to_pylist()
    as_int = tokens.tokenise(pa.array([9434765919]), linkage_key, project_key).to_pylist()

    assert len(set(spelled + as_int)) == 1


def test_invalid_numbers_get_marked_tokens_that_never_match_a_valid_one(linkage_key, project_key):
    values = pa.array(["9434765919", "9434765918", "not a number", None, "12345"])

    result = tokens.tokenise(values, linkage_key, project_key).to_pylist()

    assert TOKEN_SHAPE.fullmatch(result[0])
    assert result[1].startswith(tokens.INVALID_TOKEN_PREFIX)
    assert result[2].startswith(tokens.INVALID_TOKEN_PREFIX)
    assert result[4].startswith(tokens.INVALID_TOKEN_PREFIX)
    assert result[3] is None
    assert len({result[0], result[1], result[2], result[4]}) == 4
    # The same number with a wrong check digit is not the patient's token under another prefix.
    assert result[1][len(tokens.INVALID_TOKEN_PREFIX) :] != result[0][1:]


def test_parse_numbers_reports_reasons_without_values():
    parsed = tokens.parse_numbers(pa.array(["9434765919", "9434765918", "abc", None, "9434765919"]))

    assert parsed.reasons() == {
        "nhs_number_bad_check_digit": 1,
        "nhs_number_invalid_format": 1,
        "nhs_number_missing": 1,
    }


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.text(alphabet="0123456789 -x\t\x0b\u00a0\u2028", max_size=13)),
        min_size=1,
        max_size=20,
    )
)
def test_parse_numbers_agrees_with_is_valid_on_every_value(values):
    parsed = tokens.parse_numbers(pa.array(values, pa.string()))

    assert list(parsed.status == tokens.Status.VALID) == [nhs_number.is_valid(v) for v in values]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=-5, max_value=10**11), min_size=1, max_size=20))
def test_parse_numbers_of_integers_agrees_with_is_valid(values):
    parsed = tokens.parse_numbers(pa.array(values, pa.int64()))

    assert list(parsed.status == tokens.Status.VALID) == [nhs_number.is_valid(v) for v in values]


def test_reidentify_with_both_keys_returns_the_number(linkage_key, project_key):
    numbers = valid_nhs_numbers(20)
    token_list = tokens.tokenise(pa.array(numbers), linkage_key, project_key).to_pylist()

    found = tokens.reidentify(token_list, project_key, linkage_key)

    assert [f.nhs_number for f in found] == numbers
    assert all(f.check_digit_valid for f in found)


def test_reidentify_of_an_invalid_namespace_token_says_so(linkage_key, project_key):
    token_list = tokens.tokenise(pa.array(["9434765918"]), linkage_key, project_key).to_pylist()

    [found] = tokens.reidentify(token_list, project_key, linkage_key)

    assert found.nhs_number == "9434765918"
    assert not found.check_digit_valid


def test_a_shredded_project_key_leaves_tokens_irreversible(linkage_key):
    # The project key is random and stored only wrapped; closure destroys the wrapped copy.
    kek = tokens.generate_key()
    project_key = tokens.generate_key()
    wrapped = tokens.wrap_key(kek, project_key)
    numbers = valid_nhs_numbers(200)
    token_list = tokens.tokenise(pa.array(numbers), linkage_key, project_key).to_pylist()
    assert tokens.unwrap_key(kek, wrapped) == project_key
    del wrapped, project_key  # crypto-shredding

    # Whoever holds the linkage key (the TRE) can still compute every internal pseudonym...
    internal = tokens.internal_pseudonyms(pa.array(numbers), linkage_key)
    internal_hex = {bytes(b).hex() for b in internal.blocks}
    # ...but no token decrypts to one of them under any key it can make now,
    replacement = tokens.generate_key()
    guesses = {tokens.token_to_pseudonym(t, replacement).hex() for t in token_list}
    assert guesses.isdisjoint(internal_hex)
    # and re-identification with a wrong key yields no NHS number at all.
    assert all(r.nhs_number is None for r in tokens.reidentify(token_list, replacement, linkage_key))


def test_a_salted_derived_project_key_is_gone_with_its_salt(linkage_key):
    master = tokens.generate_key()
    salt = tokens.generate_key()
    key = tokens.derive_project_key(master, "project-42", salt=salt)

    assert tokens.derive_project_key(master, "project-42", salt=salt) == key
    assert tokens.derive_project_key(master, "project-42") != key
    assert tokens.derive_project_key(master, "project-42", salt=tokens.generate_key()) != key


def test_derived_keys_differ_by_project_and_purpose():
    master = tokens.generate_key()

    derived = {
        tokens.derive_project_key(master, "p1"),
        tokens.derive_project_key(master, "p2"),
        tokens.derive_linkage_key(master),
        tokens.derive_subkey(tokens.derive_project_key(master, "p1"), "date-shift"),
    }

    assert len(derived) == 4
    assert all(len(k) == tokens.KEY_BYTES for k in derived)


def test_a_workspace_cannot_reverse_tokens_with_anything_it_holds(linkage_key, project_key):
    # A workspace holds the tokens and the manifest's key id; neither the linkage nor the project key.
    numbers = valid_nhs_numbers(100)
    token_list = tokens.tokenise(pa.array(numbers), linkage_key, project_key).to_pylist()
    key_id = tokens.key_fingerprint(project_key)

    # An unkeyed guess (hash-style enumeration of candidates) reproduces nothing.
    assert set(token_list).isdisjoint(tokens.tokenise(pa.array(numbers), bytes(32), bytes(32)).to_pylist())
    assert project_key.hex() not in key_id and linkage_key.hex() not in key_id
    assert not any(n in t for n in numbers for t in token_list)


def test_key_fingerprint_is_stable_and_distinct(project_key):
    assert tokens.key_fingerprint(project_key) == tokens.key_fingerprint(project_key)
    assert tokens.key_fingerprint(project_key) != tokens.key_fingerprint(tokens.generate_key())


def test_a_key_of_the_wrong_size_is_refused_without_echoing_it(linkage_key):
    short = b"secret-material"

    with pytest.raises(tokens.KeyMaterialError) as caught:
        tokens.tokenise(pa.array(["9434765919"]), linkage_key, short)

    assert "secret" not in str(caught.value)


def test_extract_keys_repr_shows_no_key_material(linkage_key, project_key):
    keys = ExtractKeys(linkage_key=linkage_key, project_key=project_key)

    text = repr(keys)

    assert linkage_key.hex() not in text and repr(linkage_key) not in text and repr(project_key) not in text
    assert keys.key_id.startswith("k1:")


@pytest.mark.parametrize("bad", ["9434765919", "Tabc", "X" + "b" * 32, "T" + "a" * 32])
def test_token_to_pseudonym_refuses_what_is_not_a_token(bad, project_key):
    with pytest.raises(ValueError, match="not a project token"):
        tokens.token_to_pseudonym(bad, project_key)


def test_pseudonyms_as_arrow_keeps_missing_as_null(linkage_key):
    ps = tokens.internal_pseudonyms(pa.array(["9434765919", None]), linkage_key)

    column = ps.as_arrow()

    assert column.type == pa.binary(16)
    assert column.null_count == 1 and len(column[0].as_py()) == 16


def test_empty_column_gives_no_tokens(linkage_key, project_key):
    assert len(tokens.tokenise(pa.array([], pa.string()), linkage_key, project_key)) == 0


def test_tokens_and_pseudonyms_matches_the_two_layers_with_and_without_invalid_rows(linkage_key, project_key):
    for values in (valid_nhs_numbers(300), valid_nhs_numbers(300) + ["9434765918", None]):
        parsed = tokens.parse_numbers(pa.array(values))

        column, pseudonyms = tokens.tokens_and_pseudonyms(parsed, linkage_key, project_key)

        expected = tokens.internal_pseudonyms(parsed, linkage_key)
        assert np.array_equal(pseudonyms.blocks, expected.blocks)
        assert column.equals(tokens.project_tokens(expected, project_key))


# --- a column of NHS numbers, whatever it is called (the extract's backstop, ADR 0068) ----------


def _spaced(number: str) -> str:
    return f"{number[:3]} {number[3:6]} {number[6:]}"


def _failing_check(numbers: list[str]) -> list[str]:
    """Ten digits each, none of which passes the check digit."""
    return [n[:9] + str((int(n[9]) + 1) % 10) for n in numbers]


@pytest.mark.parametrize("column", [
    pa.array(valid_nhs_numbers(40, seed=3)),
    pa.array([_spaced(n) for n in valid_nhs_numbers(40, seed=3)]),
    pa.array([f" {n}-" for n in valid_nhs_numbers(40, seed=3)], pa.large_string()),
    pa.array([int(n) for n in valid_nhs_numbers(40, seed=3)], pa.int64()),
    pa.array([float(n) for n in valid_nhs_numbers(40, seed=3)] + [None] * 60, pa.float64()),
    pa.array(valid_nhs_numbers(40, seed=3)).dictionary_encode(),
    pa.array(valid_nhs_numbers(30, seed=3) + _failing_check(valid_nhs_numbers(20, seed=4))),
], ids=["text", "spaced", "padded-large-string", "integers", "floats-mostly-missing", "dictionary", "most-valid"])
def test_a_column_mostly_of_valid_nhs_numbers_is_recognised_in_any_form(column):
    assert tokens.mostly_valid_numbers(column)


@pytest.mark.parametrize("column", [
    pa.array(_failing_check(valid_nhs_numbers(40, seed=3))),
    pa.array(valid_nhs_numbers(20, seed=3) + ["E11.9"] * 21),
    pa.array([0] * 40, pa.int64()),  # zero-padded would pass the check
    pa.array(["0000000000"] * 40),
    pa.array([5, 17, 240, 1_000], pa.int32()),
    pa.array([None, None], pa.string()),
    pa.array([], pa.string()),
    pa.array([1.5, 9434765919.5], pa.float64()),
    pa.array([True, False]),
], ids=["failing-check", "half-valid", "zeros", "zero-text", "small-integers", "all-missing", "empty",
        "fractions", "booleans"])
def test_a_column_that_is_not_mostly_valid_nhs_numbers_is_let_through(column):
    assert not tokens.mostly_valid_numbers(column)
