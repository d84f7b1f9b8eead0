"""The pure delivery checks: each problem is found, counted by column, and no value is reported."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pseudonymisation.delivery_checks import (
    DeliveryCheckError,
    DeliveryRules,
    ExpectedColumn,
    _key_hashes,
    check_delivery,
    key_hash_chunks,
    key_hashes_of,
    public_report,
)
from pseudonymisation.profiling import CsvDialect

from .conftest import valid_nhs_numbers

TODAY = dt.date(2026, 12, 6)
EXPECTED = [ExpectedColumn("id", "integer"), ExpectedColumn("nhs", "string"), ExpectedColumn("seen", "date"),
            ExpectedColumn("score", "decimal"), ExpectedColumn("code", "string")]


def _csv(path: Path, rows: list[list[str]], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    lines = [delimiter.join(["id", "nhs", "seen", "score", "code"])] + [delimiter.join(r) for r in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _rows(n: int) -> list[list[str]]:
    numbers = valid_nhs_numbers(n, seed=5)
    return [[str(i), numbers[i], f"2020-0{1 + i % 9}-1{i % 10}", f"{i / 3:.2f}", ["I10", "E11"][i % 2]]
            for i in range(n)]


def test_a_clean_delivery_passes_with_full_counts(tmp_path: Path) -> None:
    report = check_delivery(_csv(tmp_path / "d.csv", _rows(50)), EXPECTED, DeliveryRules(key_columns=("id",)),
                            today=TODAY)

    assert report.passed and report.rows == 50 and report.problems == ()
    body = report.to_dict()
    assert body["columns"]["score"] == {"data_type": "decimal", "missing": 0, "completeness": 1.0,
                                        "type_failures": 0}
    assert body["uniqueness"] == {"key_columns": ["id"], "duplicate_rows": 0, "rows_missing_key": 0}


def test_validity_counts_check_digits_codes_future_and_early_dates(tmp_path: Path) -> None:
    rows = _rows(20)
    rows[0][1] = rows[0][1][:9] + str((int(rows[0][1][9]) + 1) % 10)  # a wrong check digit
    rows[1][1] = "12345"
    rows[2][2] = "2099-01-01"
    rows[3][2] = "1850-06-01"
    rows[4][4] = "flu"
    rules = DeliveryRules(nhs_number_column="nhs", code_patterns={"code": "[A-Z][0-9]{2}"},
                          max_invalid_nhs_fraction=0.05, max_future_date_fraction=0.0)

    report = check_delivery(_csv(tmp_path / "d.csv", rows), EXPECTED, rules, today=TODAY).to_dict()

    columns = report["columns"]
    assert sum(columns["nhs"]["nhs_numbers_invalid"].values()) == 2
    assert (columns["seen"]["dates_in_future"], columns["seen"]["dates_too_early"]) == (1, 1)
    assert columns["code"]["invalid_codes"] == 1
    assert {p["check"] for p in report["problems"]} == {"invalid_nhs_numbers", "future_dates"}


def test_wrong_types_are_counted_by_column_beyond_the_threshold(tmp_path: Path) -> None:
    rows = _rows(100)
    rows[5][0], rows[6][3], rows[7][2] = "seven", "n/a-ish", "31/02/2020"

    lenient = check_delivery(_csv(tmp_path / "d.csv", rows), EXPECTED, DeliveryRules(), today=TODAY)
    strict = check_delivery(tmp_path / "d.csv", EXPECTED, DeliveryRules(max_type_failure_fraction=0.0), today=TODAY)

    assert lenient.passed  # one bad value in a hundred is within the default 1 %
    assert [(p["check"], p["column"], p["count"]) for p in strict.problems] == [
        ("wrong_type", "id", 1), ("wrong_type", "seen", 1), ("wrong_type", "score", 1)]


def test_day_first_dates_are_dates_and_impossible_ones_are_type_failures(tmp_path: Path) -> None:
    rows = _rows(40)
    for i, row in enumerate(rows[:30]):
        y, m, d = row[2].split("-")
        row[2] = [f"{d}/{m}/{y}", f"{int(d)}/{int(m)}/{y}", f"{d}-{m}-{y}", f"{d}.{m}.{y}"][i % 4]
    rows[30][2], rows[31][2], rows[32][2] = "31/02/2020", "12/31/2020", "unknown"
    rows[33][2], rows[34][2] = "07/12/2026", "01/01/1850"  # 7 December 2026 is after TODAY

    report = check_delivery(_csv(tmp_path / "d.csv", rows), EXPECTED, DeliveryRules(), today=TODAY).to_dict()

    seen = report["columns"]["seen"]
    assert (seen["type_failures"], seen["dates_in_future"], seen["dates_too_early"]) == (3, 1, 1)


def test_a_renamed_column_is_reported_as_missing_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,nhs,seen,points,code\n1,9434765919,2020-01-01,1,I10\n")

    report = check_delivery(path, EXPECTED, DeliveryRules(), today=TODAY)

    assert not report.passed and report.rows is None
    assert report.problems[0]["check"] == "missing_columns"
    assert "score" in report.problems[0]["message"] and "points" in report.problems[0]["message"]


def test_duplicates_and_missing_keys_over_chunks(tmp_path: Path) -> None:
    rows = _rows(3000)
    rows[2999][0] = rows[10][0]
    rows[1500][0] = ""

    report = check_delivery(_csv(tmp_path / "d.csv", rows), EXPECTED, DeliveryRules(key_columns=("id",)),
                            today=TODAY, chunk_bytes=4096)

    assert report.to_dict()["uniqueness"] == {"key_columns": ["id"], "duplicate_rows": 1, "rows_missing_key": 1}
    assert {p["check"] for p in report.problems} == {"duplicate_keys", "missing_keys"}


def test_a_key_repeated_in_a_chunk_of_other_text_is_still_a_duplicate(tmp_path: Path) -> None:
    # Chunks of plain integers hash by value, mixed chunks value by value: the same key must meet
    # itself across the two, and text that only reads as the same number is a different key.
    rows = _rows(3000)
    rows[2990][0], rows[2991][0] = rows[10][0], "A-1"
    rows[2992][0], rows[2993][0], rows[2994][0] = "007", "-0", "1234567890123456789"
    rows[2995][0] = "1234567890123456789"
    key = DeliveryRules(key_columns=("id",), max_type_failure_fraction=1.0)

    report = check_delivery(_csv(tmp_path / "d.csv", rows), EXPECTED, key, today=TODAY, chunk_bytes=4096)
    whole = check_delivery(tmp_path / "d.csv", EXPECTED, key, today=TODAY)

    assert report.to_dict()["uniqueness"]["duplicate_rows"] == 2  # row 10's key, and the long number
    assert whole.to_dict()["uniqueness"] == report.to_dict()["uniqueness"]


def test_blank_values_count_as_missing_in_every_column_and_never_as_wrong_types(tmp_path: Path) -> None:
    rows = _rows(200)
    rows[3][2], rows[4][3], rows[5][3], rows[6][4] = "   ", "\t", '"\u00a0"', " "  # spaces, tab, no-break space
    rows[7][3], rows[8][4] = " 7.5", " I10"  # a leading space alone is not blank
    rules = DeliveryRules(code_patterns={"code": "[A-Z][0-9]{2}"}, max_type_failure_fraction=0.0)

    body = check_delivery(_csv(tmp_path / "d.csv", rows), EXPECTED, rules, today=TODAY, chunk_bytes=4096).to_dict()

    assert [body["columns"][c]["missing"] for c in ("id", "nhs", "seen", "score", "code")] == [0, 0, 1, 2, 1]
    assert body["columns"]["score"]["type_failures"] == 0 and body["columns"]["seen"]["type_failures"] == 0
    assert body["columns"]["code"]["invalid_codes"] == 1  # " I10" is present, and not a code


def test_drift_against_the_previous_report(tmp_path: Path) -> None:
    before = check_delivery(_csv(tmp_path / "a.csv", _rows(100)), EXPECTED, DeliveryRules(), today=TODAY)
    rows = [r[:3] + ["", r[4]] if i < 30 else r[:3] + ["900", r[4]] for i, r in enumerate(_rows(80))]
    rules = DeliveryRules(max_missing_increase=0.1, max_mean_shift_sd=3)

    after = check_delivery(_csv(tmp_path / "b.csv", rows), EXPECTED, rules, previous=before.to_dict(),
                           today=TODAY).to_dict()

    assert after["drift"]["previous_rows"] == 100 and after["drift"]["row_change"] == -0.2
    assert after["drift"]["columns"]["score"]["missing_fraction_change"] == 0.375
    assert {p["check"] for p in after["problems"]} == {"too_few_rows", "missingness_drift", "distribution_drift"}


def test_referential_orphans_against_another_table(tmp_path: Path) -> None:
    people = tmp_path / "person.parquet"
    pq.write_table(pa.table({"person_id": pa.array(range(0, 40), pa.int64())}), people)
    rules = DeliveryRules(referential=({"column": "id", "table": "person", "table_column": "person_id"},))

    report = check_delivery(_csv(tmp_path / "d.csv", _rows(50)), EXPECTED, rules, today=TODAY,
                            reference_keys={"person": lambda: key_hashes_of(people, "person_id")})

    assert report.to_dict()["referential"][0]["orphans"] == 10
    assert [p["check"] for p in report.problems] == ["referential"]


def test_other_delimiters_encodings_and_parquet_read_alike(tmp_path: Path) -> None:
    rows = _rows(30)
    rows[3][4] = "Ärztin"
    semicolon = _csv(tmp_path / "a.csv", rows, delimiter=";", encoding="cp1252")
    table = pa.table({"id": pa.array(range(30), pa.int64()), "nhs": [r[1] for r in rows],
                      "seen": pa.array([dt.date.fromisoformat(r[2]) for r in rows]),
                      "score": pa.array([float(r[3]) for r in rows]), "code": [r[4] for r in rows]})
    pq.write_table(table, tmp_path / "a.parquet")

    sniffed = check_delivery(semicolon, EXPECTED, DeliveryRules(), today=TODAY)
    told = check_delivery(semicolon, EXPECTED, DeliveryRules(), today=TODAY,
                          dialect=CsvDialect(delimiter=";", encoding="cp1252"))
    parquet = check_delivery(tmp_path / "a.parquet", EXPECTED, DeliveryRules(), today=TODAY)

    assert sniffed.to_dict()["source"]["dialect"]["delimiter"] == ";"
    for report in (sniffed, told, parquet):
        assert report.passed and report.rows == 30
        assert report.to_dict()["columns"]["score"]["type_failures"] == 0


def test_no_value_from_the_data_reaches_the_report(tmp_path: Path) -> None:
    rows = _rows(40)
    rows[0][3] = "SECRET-VALUE"
    rows[1][2] = "2099-12-31"
    rules = DeliveryRules(key_columns=("nhs",), nhs_number_column="nhs", max_type_failure_fraction=0.0)
    rows.append(list(rows[5]))

    report = check_delivery(_csv(tmp_path / "d.csv", rows), EXPECTED, rules, today=TODAY)

    shown = json.dumps(public_report(report.to_dict()))
    assert "SECRET-VALUE" not in shown and "2099" not in shown
    assert not any(r[1] in shown for r in rows)
    assert "profile" not in public_report(report.to_dict())


@pytest.mark.parametrize(
    ("rules", "message"),
    [({"max_type_failure_fraction": 1.5}, "between 0 and 1"), ({"shape": 1}, "Unknown"),
     ({"code_patterns": {"code": "("}}, "regular expression"), ({"earliest_date": "yesterday"}, "YYYY-MM-DD"),
     ({"referential": [{"column": "id"}]}, "table_column"), ({"max_mean_shift_sd": -1}, "positive")],
)
def test_bad_rules_are_refused(rules: dict, message: str) -> None:
    with pytest.raises(DeliveryCheckError, match=message):
        DeliveryRules.from_dict(rules)


def test_rules_round_trip() -> None:
    rules = DeliveryRules(key_columns=("id",), max_missing_fraction={"nhs": 0.1}, code_patterns={"code": "[A-Z]"})

    assert DeliveryRules.from_dict(rules.to_dict()) == rules


def test_an_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")

    with pytest.raises(DeliveryCheckError, match="could not be read"):
        check_delivery(tmp_path / "d.parquet", EXPECTED, DeliveryRules(), today=TODAY)


# --------------------------------------------------------------------------------------------------
# The fast path (one cast of a clean chunk) and the slow path (patterns, value by value) agree

MESSY = {
    "integer": ["1", "-2", "007", " 3 ", "+4", "", "   ", "\t", None, "x", "1.5", "1,000", "0x1F", "0xFFFFF",
                "99999999999999999999", "12345678901234567", "12"],
    "decimal": ["1.5", "-2", ".25", "3.", "1e3", " 4.5 ", "", "  ", None, "abc", "1,5", "nan", "inf", "-inf",
                "1e400", "0x10", "2.75"],
    "date": ["2020-01-31", "2099-01-01", "1850-06-01", " 2021-03-04", "2021-03-04T10:00", "2020-02-30", "2020-1-1",
             "20200101", "", "   ", None, "yesterday", "2026-12-06", "2026-12-07", "31/01/2020", "1/2/2020",
             " 07.12.2026", "31/02/2020", "12/31/2020", "31-01-20", "31/01-2020"],
}


def _counts_of(values: list[str | None], data_type: str, chunks: list[list[str | None]]) -> dict:
    from pseudonymisation import delivery_checks as checks

    counts = checks._ColumnCounts(data_type)
    for chunk in chunks:
        checks._observe(counts, pa.array(chunk, pa.string()), DeliveryRules(), "c", TODAY)
    return vars(counts)


@pytest.mark.parametrize("data_type", sorted(MESSY))
def test_each_value_is_judged_the_same_alone_as_among_messy_values(data_type: str) -> None:
    values = MESSY[data_type]

    together = _counts_of(values, data_type, [values])
    alone = _counts_of(values, data_type, [[v] for v in values])

    assert together == alone
    assert together["type_failures"] > 0
    assert together["missing"] == sum(v is None or not v.strip() for v in values)  # "", blanks, the null


@pytest.mark.parametrize("data_type", sorted(MESSY))
def test_a_clean_chunk_counts_the_same_by_the_fast_path_as_by_the_patterns(
    data_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pseudonymisation import delivery_checks as checks

    clean = {"integer": ["1", "-2", "007", None, "12", "12345678901234567"],  # the last is past 2**53
             "decimal": ["1.5", "-2", ".25", "3.", "1e3", None],
             "date": ["2020-01-31", "2099-01-01", "1850-06-01", None, "2026-12-06", "2026-12-07"]}[data_type]
    taken: list[bool] = []
    fast = checks._observe_typed_text

    def spy(*args: object) -> bool:
        taken.append(fast(*args))  # type: ignore[arg-type]
        return taken[-1]

    monkeypatch.setattr(checks, "_observe_typed_text", spy)
    by_fast_path = _counts_of(clean, data_type, [clean])
    monkeypatch.setattr(checks, "_observe_typed_text", lambda *args: False)
    by_patterns = _counts_of(clean, data_type, [clean])

    assert taken == [True]
    assert by_fast_path == by_patterns


def test_hex_text_is_a_wrong_integer_and_not_the_key_it_spells(tmp_path: Path) -> None:
    # Arrow's cast reads "0xFFFFF" as 1048575, which has as many digits as the text has characters.
    rows = _rows(40)
    rows[5][0], rows[6][0] = "0xFFFFF", "1048575"
    rules = DeliveryRules(key_columns=("id",), max_type_failure_fraction=1.0)

    report = check_delivery(_csv(tmp_path / "d.csv", rows), EXPECTED, rules, today=TODAY).to_dict()

    assert report["uniqueness"]["duplicate_rows"] == 0
    assert report["columns"]["id"]["type_failures"] == 1


def test_a_messy_delivery_reports_the_same_in_small_chunks_as_in_one(tmp_path: Path) -> None:
    rows = _rows(800)
    messy = {"id": MESSY["integer"], "score": MESSY["decimal"], "seen": MESSY["date"],
             "nhs": ["", "  ", "12345", "abcdefghij", "943 476 5919", "9434765918"], "code": ["", " ", "flu", " I10"]}
    position = {"id": 0, "nhs": 1, "seen": 2, "score": 3, "code": 4}
    for column, values in messy.items():
        for i, value in enumerate(values):
            rows[37 * i + position[column]][position[column]] = "" if value is None else f'"{value}"'
    rules = DeliveryRules(key_columns=("id",), nhs_number_column="nhs", code_patterns={"code": "[A-Z][0-9]{2}"},
                          max_type_failure_fraction=1.0)
    path = _csv(tmp_path / "d.csv", rows)

    small = check_delivery(path, EXPECTED, rules, today=TODAY, chunk_bytes=1024).to_dict()
    whole = check_delivery(path, EXPECTED, rules, today=TODAY).to_dict()

    # The means are sums over different chunks, equal but for the last bits of a float.
    assert small.pop("profile") == {c: pytest.approx(v) for c, v in whole.pop("profile").items()}
    assert small == whole
    assert small["columns"]["id"]["type_failures"] > 0 and small["columns"]["nhs"]["nhs_numbers_invalid"]


# --------------------------------------------------------------------------------------------------
# The key checks spill to private, keyed bucket files (ADR 0043)


def _keyed_rows(keys: list[str], other: list[str] | None = None) -> list[list[str]]:
    numbers = valid_nhs_numbers(len(keys), seed=6)
    return [[k, numbers[i], "2020-01-01", "1.5", other[i] if other else "I10"] for i, k in enumerate(keys)]


def _old_duplicates(path: Path, columns: list[str]) -> tuple[int, int]:
    """The method the spill replaced: every row's key hash in memory at once, sorted, equal
    neighbours counted (and rows lacking part of the key)."""
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ("id", "nhs", "seen", "score", "code")}, strings_can_be_null=True))
    hashes, missing = _key_hashes(table, columns)
    hashes.sort()
    return int(np.count_nonzero(hashes[1:] == hashes[:-1])), missing


@pytest.mark.parametrize("seed", [11, 12])
def test_duplicate_keys_are_counted_as_by_sorting_every_hash_in_memory(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cases = {
        "many repeats": [str(v) for v in rng.integers(0, 400, 3000)],
        "repeats only across chunks": [str(v) for v in [*range(1500), *range(1000, 2500)]],
        "text keys, some with zeros": [f"{'0' * int(z)}{v}" for z, v in zip(rng.integers(0, 2, 2000),
                                                                            rng.integers(0, 900, 2000), strict=True)],
        "all equal": ["77"] * 2500,
        "one row": ["5"],
        "empty": [],
    }
    for name, keys in cases.items():
        path = _csv(tmp_path / f"{name}.csv", _keyed_rows(keys))
        for columns in (["id"], ["id", "code"]):
            report = check_delivery(path, EXPECTED, DeliveryRules(key_columns=tuple(columns)), today=TODAY,
                                    chunk_bytes=2048, scratch_dir=tmp_path).to_dict()
            duplicates, missing = _old_duplicates(path, columns) if keys else (0, 0)
            assert (report["uniqueness"]["duplicate_rows"], report["uniqueness"]["rows_missing_key"]) == \
                (duplicates, missing), (name, columns)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def test_referential_orphans_from_a_reference_read_in_chunks_are_those_of_a_set_comparison(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    ours = [str(v) for v in rng.integers(0, 3000, 6000)]
    theirs = sorted({str(v) for v in rng.integers(0, 3000, 2500)})
    people = tmp_path / "person.csv"
    people.write_text("person_id\n" + "\n".join(theirs) + "\n", encoding="utf-8")
    rules = DeliveryRules(referential=({"column": "id", "table": "person", "table_column": "person_id"},))
    path = _csv(tmp_path / "d.csv", _keyed_rows(ours))

    chunked = check_delivery(path, EXPECTED, rules, today=TODAY, chunk_bytes=2048, scratch_dir=tmp_path,
                             reference_keys={"person": lambda: key_hash_chunks(people, "person_id",
                                                                                chunk_bytes=1024)}).to_dict()
    whole = check_delivery(path, EXPECTED, rules, today=TODAY, scratch_dir=tmp_path,
                           reference_keys={"person": lambda: key_hashes_of(people, "person_id")}).to_dict()
    unchecked = check_delivery(path, EXPECTED, rules, today=TODAY, scratch_dir=tmp_path).to_dict()

    distinct = set(ours)
    expected = {"distinct_values": len(distinct), "orphans": len(distinct - set(theirs)), "checked": True}
    assert {k: chunked["referential"][0][k] for k in expected} == expected
    assert {k: whole["referential"][0][k] for k in expected} == expected
    assert (unchecked["referential"][0]["distinct_values"], unchecked["referential"][0]["orphans"]) == \
        (len(distinct), None)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def _spilled(scratch: Path) -> list[tuple[Path, int, bytes]]:
    return [(f, stat.S_IMODE(f.stat().st_mode), f.read_bytes()) for f in scratch.rglob("*") if f.is_file()]


def test_spilled_key_hashes_are_private_keyed_and_removed_after_the_check(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    keys = [str(v) for v in range(20000)] + ["3"]
    path = _csv(tmp_path / "d.csv", _keyed_rows(keys))
    rules = DeliveryRules(key_columns=("id",),
                          referential=({"column": "id", "table": "person", "table_column": "person_id"},))
    seen: list[tuple[Path, int, bytes]] = []
    folders: set[tuple[Path, int]] = set()

    def look(rows: int) -> None:
        seen.extend(_spilled(scratch))
        folders.update((d, stat.S_IMODE(d.stat().st_mode)) for d in scratch.iterdir())

    report = check_delivery(path, EXPECTED, rules, today=TODAY, chunk_bytes=8192, scratch_dir=scratch, progress=look)

    assert report.to_dict()["uniqueness"]["duplicate_rows"] == 1
    assert seen, "the check wrote nothing while it ran: nothing was tested"
    assert {mode for _, mode, _ in seen} == {0o600}
    assert folders and {mode for _, mode in folders} == {0o700}
    assert {d.parent for d, _ in folders} == {scratch}
    unkeyed = set(_key_hashes(pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={"id": pa.string()})), ["id"])[0].tolist())
    written = set(np.frombuffer(b"".join(data for _, _, data in seen), dtype=np.uint64).tolist())
    assert len(unkeyed) == 20000 and not written & unkeyed
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("failure", ["a row of too many values late in the file", "the caller stops mid-read"])
def test_a_check_that_fails_mid_read_leaves_no_spill(tmp_path: Path, failure: str) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    # Past the first MiB (where the header is read), so the bad row is met mid-read.
    path = _csv(tmp_path / "d.csv", _keyed_rows([str(v) for v in range(40000)]))
    if failure.startswith("a row"):
        with path.open("a", encoding="utf-8") as handle:
            handle.write("1,2,3,4,5,6,7\n")
    written: list[int] = []

    def progress(rows: int) -> None:
        written.append(len(_spilled(scratch)))
        if failure.startswith("the caller") and rows > 15000:
            raise RuntimeError("stopped")

    with pytest.raises((DeliveryCheckError, RuntimeError)):
        check_delivery(path, EXPECTED, DeliveryRules(key_columns=("id",)), today=TODAY, chunk_bytes=8192,
                       scratch_dir=scratch, progress=progress)

    assert max(written) > 0, "nothing was spilled before the failure: nothing was tested"
    assert list(scratch.iterdir()) == []
