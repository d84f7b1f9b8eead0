"""The synthetic region: valid identifiers, determinism, linkage, plausible dates, bounded chunks."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pseudonymisation import nhs_number
from pseudonymisation.schema import DatasetSchema, Role
from tre.demo import synthetic

PATIENTS = 12_000  # two full blocks and a partial one, so block edges are exercised
SEED = 7
REF = pd.Timestamp(synthetic.REFERENCE_DATE)
WINDOW = pd.Timestamp(synthetic.WINDOW_START)


def _expected_bad(patients: int) -> tuple[int, int]:
    """(missing, wrong check digit) the generator promises: per block, half of round(0.5%)."""
    block = synthetic.BLOCK_SIZE
    sizes = [min(block, patients - start) for start in range(0, patients, block)]
    bad = [round(n * synthetic.INVALID_NHS_SHARE) for n in sizes]
    return sum(b // 2 for b in bad), sum(b - b // 2 for b in bad)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("region")
    result = synthetic.generate(out, patients=PATIENTS, seed=SEED, chunk_size=5_000)
    tables = {name: pq.read_table(path).to_pandas() for name, path in result["paths"].items()}
    return {"result": result, "out": out, **tables}


def test_check_digits_match_reference_implementation_for_random_prefixes() -> None:
    prefixes = np.random.default_rng(1).integers(100_000_000, 999_999_999, 3_000)
    digits = synthetic.check_digits(prefixes)
    for prefix, digit in zip(prefixes.tolist(), digits.tolist(), strict=True):
        expected = nhs_number.check_digit(str(prefix))
        assert digit == (10 if expected is None else expected)


def test_nhs_numbers_valid_except_deliberate_share(region: dict) -> None:
    numbers = region["patients"]["nhs_number"]
    missing, wrong = _expected_bad(PATIENTS)
    assert numbers.isna().sum() == missing
    present = numbers.dropna()
    valid = present.map(nhs_number.is_valid)
    assert (~valid).sum() == wrong
    assert present.str.fullmatch(r"\d{10}").all()  # the invalid ones are well-formed, wrong check digit
    assert present.str[:3].astype(int).between(400, 499).all()


def test_nhs_numbers_unique_when_present(region: dict) -> None:
    present = region["patients"]["nhs_number"].dropna()
    assert present.is_unique


def test_nhs_numbers_unique_across_many_blocks() -> None:
    permutation = synthetic._nhs_permutation(SEED)
    rng = np.random.default_rng(0)
    numbers = np.concatenate([synthetic._nhs_numbers(b, synthetic.BLOCK_SIZE, permutation, rng)
                              for b in (0, 1, 2, 999, 16_665)])
    assert np.unique(numbers).size == numbers.size


def test_same_seed_and_count_give_byte_identical_files(tmp_path: Path) -> None:
    synthetic.generate(tmp_path / "a", patients=6_000, seed=SEED, chunk_size=5_000)
    synthetic.generate(tmp_path / "b", patients=6_000, seed=SEED, chunk_size=5_000, progress=True)
    digests = _digests(tmp_path / "a")
    assert set(digests) == {"patients.parquet", "gp_events.parquet", "admissions.parquet",
                            "prescriptions.parquet", "datasets.json"}
    assert digests == _digests(tmp_path / "b")


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    first = synthetic.generate(tmp_path / "a", patients=1_000, seed=1)
    second = synthetic.generate(tmp_path / "b", patients=1_000, seed=2)
    a = pq.read_table(first["paths"]["patients"])
    b = pq.read_table(second["paths"]["patients"])
    assert not a.equals(b)
    assert set(a["nhs_number"].to_pylist()) != set(b["nhs_number"].to_pylist())


def test_chunk_size_changes_row_groups_but_not_values(region: dict, tmp_path: Path) -> None:
    whole = synthetic.generate(tmp_path, patients=PATIENTS, seed=SEED, chunk_size=1_000_000)
    for name, path in whole["paths"].items():
        assert pq.read_table(path).equals(pq.read_table(region["result"]["paths"][name])), name
    assert pq.ParquetFile(whole["paths"]["patients"]).num_row_groups == 1
    assert pq.ParquetFile(region["result"]["paths"]["patients"]).num_row_groups == 3


def test_chunks_generated_lazily_and_bounded_by_chunk_size() -> None:
    chunks = synthetic.iter_chunks(patients=synthetic.MAX_PATIENTS, seed=SEED, chunk_size=5_000)
    done, tables = next(chunks)  # would never return if all 83 million were made up front
    assert done == tables["patients"].num_rows == 5_000
    chunks.close()


def test_chunk_size_rounds_up_to_whole_blocks() -> None:
    sizes = [done for done, _ in synthetic.iter_chunks(patients=12_000, seed=SEED, chunk_size=6_000)]
    assert sizes == [10_000, 2_000]


def test_peak_memory_does_not_grow_with_patients(tmp_path: Path) -> None:
    def peak(patients: int) -> int:
        tracemalloc.start()
        try:
            synthetic.generate(tmp_path / str(patients), patients=patients, seed=SEED, chunk_size=5_000)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(5_000)  # warm caches so the two measured runs start alike
    small, large = peak(5_000), peak(30_000)
    assert large < 1.5 * small


def test_every_child_row_links_to_a_patient(region: dict) -> None:
    known = set(region["patients"]["nhs_number"].dropna())
    for name in ("gp_events", "admissions", "prescriptions"):
        linked = region[name]["nhs_number"].dropna()
        assert len(linked) > 0
        assert set(linked) <= known, name


def test_patients_without_number_keep_unlinkable_child_rows(region: dict) -> None:
    assert region["gp_events"]["nhs_number"].isna().any()


def test_discharge_never_before_admission(region: dict) -> None:
    admissions = region["admissions"]
    assert (admissions["discharge_date"] >= admissions["admission_date"]).all()
    assert set(admissions["method"]) == {"elective", "emergency"}


def test_dates_plausible_against_birth_and_reference_date(region: dict) -> None:
    patients = region["patients"].dropna(subset=["nhs_number"])
    dob = pd.to_datetime(patients["date_of_birth"])
    assert dob.max() <= REF
    assert (REF - dob).dt.days.max() <= 106 * 365.25
    assert ((REF - dob).dt.days >= 90 * 365.25).any()  # the pyramid reaches past ninety
    births = patients.set_index("nhs_number")["date_of_birth"]
    for name, column in (("gp_events", "event_date"), ("admissions", "admission_date"),
                         ("prescriptions", "issue_date")):
        table = region[name].dropna(subset=["nhs_number"])
        day = pd.to_datetime(table[column])
        born = pd.to_datetime(table["nhs_number"].map(births))
        assert (day >= born).all(), name
        assert (day <= REF).all(), name
        if name != "gp_events":  # GP diagnoses may predate the window; nothing else does
            assert (day >= WINDOW).all(), name
    assert (pd.to_datetime(region["admissions"]["discharge_date"]) <= REF).all()


def test_row_counts_near_targets(region: dict) -> None:
    rows = region["result"]["rows"]
    assert rows["patients"] == PATIENTS
    assert 4.0 <= rows["gp_events"] / PATIENTS <= 6.0
    assert 0.2 <= rows["admissions"] / PATIENTS <= 0.4
    assert 2.2 <= rows["prescriptions"] / PATIENTS <= 3.8
    for name, count in rows.items():
        assert len(region[name]) == count


def test_demographic_columns_well_formed(region: dict) -> None:
    patients = region["patients"]
    assert patients["postcode"].str.fullmatch(r"[A-Z]{1,2}\d{1,2} \d[ABD-HJLNP-UW-Z]{2}").all()
    assert patients["registered_practice"].str.fullmatch(r"Y\d{5}").all()
    assert set(patients["sex"]) == {"F", "M"}
    assert patients["deprivation_decile"].between(1, 10).all()
    assert set(patients["deprivation_decile"]) == set(range(1, 11))
    shares = patients["ethnicity"].value_counts(normalize=True)
    assert shares.index[0] == "White" and 0.6 < shares["White"] < 0.9
    assert patients[["given_name", "family_name", "date_of_birth", "ethnicity"]].notna().all().all()


def test_diabetes_more_common_in_deprived_and_older_patients(region: dict) -> None:
    patients = region["patients"].dropna(subset=["nhs_number"])
    events = region["gp_events"]
    diabetic = patients["nhs_number"].isin(set(events.loc[events["code"] == "44054006", "nhs_number"]))
    deprived = diabetic[patients["deprivation_decile"] <= 3].mean()
    affluent = diabetic[patients["deprivation_decile"] >= 8].mean()
    assert deprived > 1.3 * affluent
    age = (REF - pd.to_datetime(patients["date_of_birth"])).dt.days / 365.25
    assert diabetic[age >= 60].mean() > 3 * diabetic[(age >= 18) & (age < 60)].mean()


def test_prescriptions_follow_diagnoses(region: dict) -> None:
    events = region["gp_events"]
    diabetic = set(events.loc[events["code"] == "44054006", "nhs_number"].dropna())
    metformin = region["prescriptions"].loc[lambda p: p["drug_name"].str.startswith("Metformin")]
    assert len(metformin) > 0
    assert metformin["nhs_number"].dropna().isin(diabetic).all()
    assert (region["prescriptions"]["cost_gbp"] > 0).all()
    assert region["prescriptions"]["bnf_code"].str.fullmatch(r"\d{4}[0-9A-Z]{5}").all()


def test_values_present_only_for_measurements(region: dict) -> None:
    events = region["gp_events"]
    measured = events["code"].isin(["999791000000106", "271649006", "80274001", "77068002", "60621009"])
    assert events.loc[measured, "value"].notna().all()
    assert events.loc[~measured, "value"].isna().all()
    hba1c = events.loc[events["code"] == "999791000000106", "value"]
    assert hba1c.between(25, 130).all()
    assert events["code"].nunique() >= 30


def test_free_text_leaks_identifiers_occasionally(region: dict) -> None:
    events = region["gp_events"]
    notes = events.dropna(subset=["free_text", "nhs_number"])
    assert 0.2 < events["free_text"].notna().mean() < 0.4
    people = region["patients"].dropna(subset=["nhs_number"]).set_index("nhs_number")
    spaced = notes["nhs_number"].str.replace(r"(\d{3})(\d{3})(\d{4})", r"\1 \2 \3", regex=True)
    with_number = [s in text for s, text in zip(spaced, notes["free_text"], strict=True)]
    full_names = notes["nhs_number"].map(people["given_name"] + " " + people["family_name"])
    with_name = [n in text for n, text in zip(full_names, notes["free_text"], strict=True)]
    assert sum(with_number) > 0 and sum(with_name) > 0
    leaking = notes["free_text"].str.contains(r"^(?:Seen: |NHS no |DOB |Home visit to |Contact mobile )")
    assert 0.01 < leaking.mean() < 0.10


def test_hospital_number_stable_per_patient_and_provider(region: dict) -> None:
    admissions = region["admissions"].dropna(subset=["nhs_number"])
    per_pair = admissions.groupby(["nhs_number", "provider"])["hospital_number"].nunique()
    assert (per_pair == 1).all()
    per_number = admissions.groupby("hospital_number")["nhs_number"].nunique()
    assert (per_number == 1).all()
    assert admissions["hospital_number"].str.fullmatch(r"[A-Z]\d{8}").all()


def test_datasets_json_describes_every_column_with_role(region: dict) -> None:
    described = json.loads((region["out"] / "datasets.json").read_text(encoding="utf-8"))
    assert described["seed"] == SEED and described["synthetic"] is True
    roles = {"direct_identifier", "quasi_identifier", "attribute", "free_text"}
    assert [t["name"] for t in described["tables"]] == list(synthetic.TABLES)
    for table in described["tables"]:
        schema = pq.read_schema(region["out"] / table["file"])
        assert [c["name"] for c in table["columns"]] == schema.names
        assert table["rows"] == region["result"]["rows"][table["name"]]
        for column in table["columns"]:
            assert column["role"] in roles
            assert column["sensitivity"] in {"high", "medium", "low"}
            assert column["description"]
    columns = {(t["name"], c["name"]): c["role"] for t in described["tables"] for c in t["columns"]}
    assert columns[("patients", "nhs_number")] == "direct_identifier"
    assert columns[("gp_events", "free_text")] == "free_text"
    assert columns[("admissions", "hospital_number")] == "direct_identifier"


@pytest.mark.parametrize("patients", [0, -5, synthetic.MAX_PATIENTS + 1, 2.5, True])
def test_generate_rejects_bad_patient_count(tmp_path: Path, patients: object) -> None:
    with pytest.raises(ValueError, match="patients"):
        synthetic.generate(tmp_path, patients=patients)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_generate_rejects_bad_chunk_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        synthetic.generate(tmp_path, patients=10, chunk_size=0)


def test_block_has_its_own_stream_regardless_of_neighbours() -> None:
    alone = synthetic.generate_block(SEED, 1, synthetic.BLOCK_SIZE)
    chunks = list(synthetic.iter_chunks(patients=2 * synthetic.BLOCK_SIZE, seed=SEED, chunk_size=10_000))
    second_half = chunks[0][1]["patients"].slice(synthetic.BLOCK_SIZE)
    assert alone["patients"].equals(second_half)


def test_datasets_json_tables_load_as_pseudonymisation_schemas(region: dict) -> None:
    described = json.loads((region["out"] / "datasets.json").read_text(encoding="utf-8"))
    for table in described["tables"]:
        schema = DatasetSchema.from_dict(table)
        assert schema.nhs_number_column == "nhs_number"
        assert schema.column("nhs_number").role is Role.DIRECT_IDENTIFIER
        data = region[table["name"]]
        for column in schema.columns:
            if column.valid_pattern:
                assert data[column.name].str.fullmatch(column.valid_pattern).all(), column.name
