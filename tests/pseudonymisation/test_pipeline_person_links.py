"""The pipeline with the person index: a row found in the index takes its person's token (whatever
its own number), carries its link method and probability, is not rejected for a missing number, and
leaves when its person's number is on an opt-out list. Pure: no database."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pseudonymisation import tokens
from pseudonymisation.extract_options import ExtractKeys, ExtractOptions, IndexedRecord, PersonLinks
from pseudonymisation.optouts import OptOutList
from pseudonymisation.pipeline import run_extract
from pseudonymisation.schema import DatasetSchema
from tests.pseudonymisation.conftest import valid_nhs_numbers
from tre.demo.linkage_sources import schema_spec

NUMBER, OTHER = valid_nhs_numbers(2, seed=4)


def _source(tmp_path: Path) -> Path:
    table = pa.table({
        "record_id": ["s1", "s2", "s3", "s4"],
        "nhs_number": [None, None, None, OTHER],
        "first_name": ["Ada", "Bo", "Cy", "Di"], "surname": ["L", "M", "N", "O"],
        "date_of_birth": pa.array([dt.date(1950, 1, 2)] * 4, pa.date32()),
        "sex": ["F", "M", "M", "F"], "postcode": ["LS1 1AA"] * 4,
        "seen_on": pa.array([dt.date(2024, 5, 1)] * 4, pa.date32()),
    })
    path = tmp_path / "social_care.parquet"
    pq.write_table(table, path)
    return path


def _options(tmp_path: Path, keys: ExtractKeys, optouts: list[OptOutList]) -> ExtractOptions:
    person = tokens.internal_pseudonyms(pa.array([NUMBER]), keys.linkage_key).blocks[0].tobytes()
    nobody = tokens.person_pseudonyms([b"0123456789"], keys.linkage_key)[0].tobytes()
    links = PersonLinks("record_id", "run-1", {
        "s1": IndexedRecord(person, "probabilistic", 0.97),  # a hospital patient's record, without a number
        "s2": IndexedRecord(nobody, "singleton", None),  # in the index, nobody else's
    })
    return ExtractOptions(_source(tmp_path), DatasetSchema.from_dict(schema_spec("social_care")),
                          ["nhs_number", "sex", "seen_on"], tmp_path / "out", keys, optout_lists=optouts,
                          person_links=links, project_id="p1")


def _table(tmp_path: Path) -> pa.Table:
    return pq.read_table(sorted((tmp_path / "out" / "data").glob("*.parquet")))


def test_indexed_row_without_a_number_takes_its_persons_token_and_carries_method_and_probability(
    tmp_path: Path, keys: ExtractKeys
) -> None:
    manifest = run_extract(_options(tmp_path, keys, []))
    out = _table(tmp_path).to_pydict()

    hospital_token = tokens.tokenise(pa.array([NUMBER]), keys.linkage_key, keys.project_key)[0].as_py()
    assert out["patient_token"][0] == hospital_token  # the same token the hospital record gets
    assert out["patient_token"][1].startswith("T") and out["patient_token"][1] != hospital_token
    assert out["link_method"] == ["probabilistic", "singleton", None]
    assert out["match_probability"] == [0.97, None, None]
    # s3: not in the index and no number, so the reject policy removes it; s4 keeps its own number's token.
    assert len(out["patient_token"]) == 3
    assert out["patient_token"][2] == tokens.tokenise(pa.array([OTHER]), keys.linkage_key, keys.project_key)[0].as_py()
    assert manifest["rows"]["rejected"] == 1
    assert manifest["person_index"]["rows_linked_by_method"] == {"probabilistic": 1, "singleton": 1}


def test_opt_out_follows_the_person_to_a_record_without_a_number(tmp_path: Path, keys: ExtractKeys) -> None:
    manifest = run_extract(_options(tmp_path, keys, [OptOutList.from_numbers("national", [NUMBER])]))
    out = _table(tmp_path).to_pydict()

    hospital_token = tokens.tokenise(pa.array([NUMBER]), keys.linkage_key, keys.project_key)[0].as_py()
    assert hospital_token not in out["patient_token"]
    assert out["link_method"] == ["singleton", None]
    assert manifest["rows"]["opted_out"] == 1
