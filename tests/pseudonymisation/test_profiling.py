import dataclasses
import datetime as dt
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pseudonymisation import profiling
from pseudonymisation.profiling import ProfilingError, propose
from pseudonymisation.schema import InvalidNhsPolicy, Role, SchemaError, TransformKind

from .conftest import valid_nhs_numbers

TODAY = dt.date(2026, 12, 1)
FIRST = ["Alice", "Bashir", "Chen", "Dorota", "Emeka", "Fiona", "Gareth", "Hana", "Ivan", "Jo"]
LAST = ["Smith", "Khan", "Li", "Nowak", "Obi", "Reid", "Jones", "Sato", "Petrov", "O'Neil"]
POSTCODES = ["LS1 4AP", "ls6 2qd", "M1 1AE", "BD7 1DP", "HX1 2RN", "wf1 3aa", "YO1 7HH", "S10 2TN", "HG1 1AA",
             "LS29 8BB"]


def _rows(count: int = 40) -> list[dict[str, str]]:
    numbers = valid_nhs_numbers(count, seed=3)
    rows = []
    for i in range(count):
        rows.append(
            {
                "nhs_no": numbers[i] if i % 10 else "",  # every tenth is missing
                "forename": FIRST[i % 10] + ("a" * (i // 10)),
                "surname": LAST[(i * 3) % 10],
                "dob": f"{1940 + i}-0{1 + i % 9}-1{i % 10}",
                "postcode": POSTCODES[i % 10],
                "diagnosis": ["E11", "I10", "J45.9", "C50.1"][i % 4],
                "weight_kg": f"{60 + i}.5",
                "notes": "Seen in clinic today, reports chest pain after exercise; plan review in six weeks"
                if i % 2
                else "",
            }
        )
    return rows


def _write_csv(path, rows, *, delimiter=",", encoding="utf-8"):
    header = list(rows[0])
    lines = [delimiter.join(header)]
    for row in rows:
        lines.append(delimiter.join(f'"{row[h]}"' if delimiter in row[h] or "\n" in row[h] else row[h] for h in header))
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _by_name(proposal):
    return {c.name: c for c in proposal.columns}


def test_propose_gives_each_column_a_role_and_an_existing_rule(tmp_path):
    proposal = propose(_write_csv(tmp_path / "clinic.csv", _rows()), today=TODAY)
    cols = _by_name(proposal)

    assert proposal.row_count == 40
    assert proposal.nhs_number_column == "nhs_no"
    assert (cols["nhs_no"].role, cols["nhs_no"].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.NHS_TOKEN)
    assert (cols["forename"].role, cols["forename"].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.DROP)
    assert (cols["surname"].role, cols["surname"].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.DROP)
    assert (cols["dob"].role, cols["dob"].rule) == (Role.QUASI_IDENTIFIER, TransformKind.DOB_AGE_BAND)
    assert (cols["postcode"].role, cols["postcode"].rule) == (Role.QUASI_IDENTIFIER, TransformKind.POSTCODE_DISTRICT)
    assert (cols["diagnosis"].role, cols["diagnosis"].rule) == (Role.ATTRIBUTE, TransformKind.KEEP)
    assert cols["weight_kg"].data_type == "decimal"
    assert (cols["notes"].role, cols["notes"].rule) == (Role.FREE_TEXT, TransformKind.DROP)
    assert all(c.rule in profiling.RULES for c in proposal.columns)


def test_propose_counts_missing_nhs_numbers_and_bad_check_digits(tmp_path):
    rows = _rows()
    rows[1]["nhs_no"] = rows[1]["nhs_no"][:9] + str((int(rows[1]["nhs_no"][9]) + 1) % 10)  # bad check digit

    proposal = propose(_write_csv(tmp_path / "c.csv", rows), today=TODAY)
    counts = _by_name(proposal)["nhs_no"].counts

    assert counts["missing"] == 4
    assert counts["nhs_number_bad_check_digit"] == 1
    assert counts["nhs_number_valid"] == 35
    assert _by_name(proposal)["nhs_no"].rule is TransformKind.NHS_TOKEN


def test_propose_does_not_token_ten_digit_numbers_that_fail_the_check_digit(tmp_path):
    rows = _rows()
    for i, row in enumerate(rows):
        row["nhs_no"] = f"{1234567000 + i * 7}"  # ten digits, mostly not valid NHS numbers

    proposal = propose(_write_csv(tmp_path / "c.csv", rows), today=TODAY)

    assert proposal.nhs_number_column is None
    assert _by_name(proposal)["nhs_no"].rule is not TransformKind.NHS_TOKEN


def test_propose_reads_semicolons_latin1_and_quoted_newlines(tmp_path):
    rows = _rows()
    rows[3]["surname"] = "Brontë"
    rows[5]["notes"] = "Line one; with a semicolon\nand a second line after the newline in the value"

    proposal = propose(_write_csv(tmp_path / "c.csv", rows, delimiter=";", encoding="latin-1"), today=TODAY)

    assert proposal.row_count == 40
    assert proposal.dialect.delimiter == ";"
    assert proposal.dialect.encoding in ("cp1252", "latin-1")
    assert [c.name for c in proposal.columns] == list(rows[0])
    assert _by_name(proposal)["postcode"].rule is TransformKind.POSTCODE_DISTRICT
    assert any("comma-separated UTF-8" in w for w in proposal.warnings)


def test_propose_counts_mixed_date_formats_and_warns(tmp_path):
    rows = _rows()
    for row in rows[::2]:
        y, m, d = row["dob"].split("-")
        row["dob"] = f"{d}/{m}/{y}"

    proposal = propose(_write_csv(tmp_path / "c.csv", rows), today=TODAY)
    dob = _by_name(proposal)["dob"]

    assert dob.rule is TransformKind.DOB_AGE_BAND
    assert (dob.counts["dates_iso"], dob.counts["dates_day_month_year"]) == (20, 20)
    assert "dates_unparsed" not in dob.counts
    assert [w for w in proposal.warnings if w.startswith("Column dob")] == [
        "Column dob: 20 dates are written day/month/year; the extract reads them day first (03/04/2020 is "
        "3 April 2020)"]


def test_propose_warns_of_the_dates_it_could_not_read_and_counts_impossible_ones(tmp_path):
    rows = _rows()
    for i, row in enumerate(rows):
        row["admission_date"] = f"2024-0{1 + i % 9}-1{i % 10}"
        if i % 4 == 1:
            row["admission_date"] = f"1{i % 10}/0{1 + i % 9}/2024"
    rows[2]["admission_date"] = "31/02/2024"  # no such day
    rows[6]["admission_date"] = "12/31/2024"  # month first: not read
    rows[10]["admission_date"] = "unknown"

    proposal = propose(_write_csv(tmp_path / "c.csv", rows), today=TODAY)
    column = _by_name(proposal)["admission_date"]

    assert column.rule is TransformKind.DATE_SHIFT
    assert column.counts["dates_unparsed"] == 2
    warnings = [w for w in proposal.warnings if w.startswith("Column admission_date")]
    assert warnings == [
        "Column admission_date: 12 dates are written day/month/year; the extract reads them day first "
        "(03/04/2020 is 3 April 2020)",
        "Column admission_date: 3 values could not be read as dates (neither YYYY-MM-DD nor day/month/year); "
        "the extract leaves them empty"]


def test_propose_treats_event_dates_as_shifted_dates(tmp_path):
    rows = _rows()
    for i, row in enumerate(rows):
        row["admission_date"] = f"2024-0{1 + i % 9}-0{1 + i % 9}"

    cols = _by_name(propose(_write_csv(tmp_path / "c.csv", rows), today=TODAY))

    assert cols["admission_date"].rule is TransformKind.DATE_SHIFT


def test_propose_without_an_nhs_number_offers_the_year_not_a_date_shift(tmp_path):
    rows = _rows()
    for i, row in enumerate(rows):
        del row["nhs_no"]
        row["admission_date"] = f"2024-0{1 + i % 9}-0{1 + i % 9}"

    proposal = propose(_write_csv(tmp_path / "c.csv", rows), today=TODAY)

    assert proposal.nhs_number_column is None
    assert _by_name(proposal)["admission_date"].rule is TransformKind.DOB_YEAR
    proposal.to_schema("clinic", reference_date=TODAY)  # the schema accepts it


def test_propose_never_carries_a_value_from_the_source(tmp_path):
    rows = _rows()
    proposal = propose(_write_csv(tmp_path / "c.csv", rows), today=TODAY)

    text = json.dumps(proposal.to_dict())

    for row in rows:
        for value in (row["nhs_no"], row["forename"], row["surname"], row["dob"], row["postcode"]):
            if value:
                assert value not in text


def test_propose_reads_parquet_with_native_types(tmp_path):
    numbers = valid_nhs_numbers(30, seed=5)
    table = pa.table(
        {
            "nhs_number": pa.array([int(n) for n in numbers], pa.int64()),
            "date_of_birth": pa.array([dt.date(1950 + i, 1, 2) for i in range(30)]),
            "score": pa.array([float(i) for i in range(30)]),
        }
    )
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=7)

    proposal = propose(tmp_path / "s.parquet", today=TODAY)
    cols = _by_name(proposal)

    assert proposal.row_count == 30
    assert proposal.nhs_number_column == "nhs_number"
    assert cols["date_of_birth"].rule is TransformKind.DOB_AGE_BAND
    assert cols["score"].rule is TransformKind.KEEP


def test_propose_reads_in_small_chunks_the_same_as_in_one(tmp_path):
    path = _write_csv(tmp_path / "c.csv", _rows(200))

    small = propose(path, chunk_bytes=1024, today=TODAY)
    whole = propose(path, today=TODAY)

    assert small.to_dict() == whole.to_dict()


def test_propose_refuses_an_unknown_kind_of_file(tmp_path):
    (tmp_path / "x.xlsx").write_bytes(b"PK")

    with pytest.raises(ProfilingError, match="parquet or .csv"):
        propose(tmp_path / "x.xlsx")


def test_to_schema_gives_an_age_band_its_reference_date(tmp_path):
    proposal = propose(_write_csv(tmp_path / "c.csv", _rows()), today=TODAY)

    schema = proposal.to_schema("clinic", reference_date=TODAY)

    assert schema.column("dob").effective_transform.params == {"reference_date": "2026-12-01"}
    assert schema.nhs_number_column == "nhs_no"


def test_build_schema_refuses_a_rule_the_pipeline_would_refuse():
    with pytest.raises(SchemaError, match="cannot take"):
        profiling.build_schema(
            "x", {"name": (Role.DIRECT_IDENTIFIER, TransformKind.KEEP)}, order=["name"],
            nhs_number_column=None, reference_date=TODAY,
        )


def test_preview_shows_tokens_bands_and_districts_never_identifiers(tmp_path):
    rows = _rows()
    path = _write_csv(tmp_path / "c.csv", rows)
    schema = propose(path, today=TODAY).to_schema("clinic", reference_date=TODAY)

    shown = profiling.preview(path, schema, rows=5)
    text = json.dumps(shown)

    assert shown["columns"] == ["patient_token", "dob", "postcode", "diagnosis", "weight_kg"]
    assert len(shown["rows"]) == 5
    # The first row has no NHS number: left out, as the extract leaves it out, and counted.
    assert shown["left_out"] == {"NHS number missing": 1} and shown["read"] == 6
    assert shown["rows"][0][1] == "85-89"  # born 1941-02-11, 85 at 2026-12-01
    assert shown["rows"][0][2] == "LS6"
    for row in rows[:6]:
        for value in (row["nhs_no"], row["forename"], row["surname"], row["dob"], row["postcode"]):
            if value:
                assert value not in text


def test_preview_bands_and_shifts_day_month_year_dates(tmp_path):
    rows = _rows()
    for row in rows:
        y, m, d = row["dob"].split("-")
        row["dob"] = f"{int(d)}/{int(m)}/{y}"  # 11/2/1941: day first, no leading zeros
        row["seen_on"] = f"{d}.{m}.2025"
    path = _write_csv(tmp_path / "c.csv", rows)
    schema = propose(path, today=TODAY).to_schema("clinic", reference_date=TODAY)

    shown = profiling.preview(path, schema, rows=5)

    dob, seen = shown["columns"].index("dob"), shown["columns"].index("seen_on")
    assert shown["rows"][0][dob] == "85-89"  # born 11/2/1941, 85 at 2026-12-01 (the row before it has no number)
    assert all(row[seen] is not None and row[seen].startswith(("2024-", "2025-", "2026-")) for row in shown["rows"])


def test_preview_hides_a_kept_quasi_identifier(tmp_path):
    rows = _rows()
    path = _write_csv(tmp_path / "c.csv", rows)
    choices = {c.name: (c.role, c.rule) for c in propose(path, today=TODAY).columns}
    choices["postcode"] = (Role.QUASI_IDENTIFIER, TransformKind.KEEP)
    schema = profiling.build_schema("c", choices, order=list(choices), nhs_number_column="nhs_no",
                                    reference_date=TODAY)

    shown = profiling.preview(path, schema, rows=3)

    position = shown["columns"].index("postcode")
    assert {row[position] for row in shown["rows"]} == {profiling.HIDDEN}


def test_propose_lists_every_column_of_a_header_without_rows(tmp_path):
    (tmp_path / "h.csv").write_text("nhs_number,postcode\n")

    proposal = propose(tmp_path / "h.csv", today=TODAY)

    assert proposal.row_count == 0
    assert [(c.name, c.rule) for c in proposal.columns] == [("nhs_number", TransformKind.DROP),
                                                             ("postcode", TransformKind.DROP)]
    assert all(c.reason == "every value is missing" for c in proposal.columns)


def test_propose_reads_a_byte_order_mark_and_refuses_ragged_rows(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffid,town\n1,Bradford\n".encode())
    (tmp_path / "ragged.csv").write_text("a,b\n1,2,3\n")

    assert [c.name for c in propose(tmp_path / "bom.csv").columns] == ["id", "town"]
    with pytest.raises(ProfilingError, match="delimiter and quoting"):
        propose(tmp_path / "ragged.csv")


def test_reading_a_csv_holds_about_one_chunk_not_the_file(tmp_path, monkeypatch):
    path = _write_csv(tmp_path / "big.csv", _rows(40) * 3000)  # 120,000 rows, about 11 MB
    dialect = profiling.sniff_csv(path)
    before = pa.total_allocated_bytes()
    # The header is read first, with one block of its own (1 MiB) that Arrow lets go of on its I/O thread.
    # On a busy machine that happened while the first batches were being counted here (1.2 MB held at
    # the first batch in 3 of 15 runs beside two busy loops), so it is read and let go of before counting.
    names = profiling._column_names(profiling.as_source(path), "csv", dialect)
    deadline = time.monotonic() + 60
    while pa.total_allocated_bytes() - before > 64 * 1024 and time.monotonic() < deadline:
        time.sleep(0.01)
    monkeypatch.setattr(profiling, "_column_names", lambda *_: names)
    before = pa.total_allocated_bytes()

    held = [pa.total_allocated_bytes() - before for _ in profiling._batches(path, "csv", dialect, 64 * 1024)]

    assert len(held) > 100
    # About three blocks' worth; reading ahead from a path held dozens of blocks (over 2 MB here).
    assert max(held) < 16 * 64 * 1024


def test_propose_finds_padded_and_family_first_names_under_any_heading(tmp_path):
    given = ["Amelia", "Oliver", "Priya", "Mohammed", "Grace", "Tomasz", "Aisha", "Liam"]
    family = ["Smith", "Patel", "Jones", "Khan", "Nowak"]
    names = [f"{family[i % 5]}, {given[i % 8]}" if i % 2 else f"{given[i % 8]} {family[i % 5]} " for i in range(40)]
    path = tmp_path / "who.csv"
    path.write_text("person;seen\n" + "".join(f'"{n}";yes\n' for n in names), encoding="utf-8")

    proposal = propose(path, today=TODAY)

    assert (_by_name(proposal)["person"].role, _by_name(proposal)["person"].rule) == (
        Role.DIRECT_IDENTIFIER, TransformKind.DROP)


SURNAMES = ["Smith", "O'Neil", "Brontë", "Nguyen, Jr", "Patel"]


def _clinic_export(path, rows):
    """A clinic's CSV as exported: a byte order mark, CRLF line ends, quoted values with commas."""
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(f'"{r[h]}"' if "," in r[h] else r[h] for h in header) for r in rows]
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def test_propose_drops_names_and_bands_births_named_by_the_heading_whatever_the_values(tmp_path):
    numbers = valid_nhs_numbers(50, seed=7)
    rows = []
    for i in range(50):
        dob = [f"1950-03-0{1 + i % 9}", f"0{1 + i % 9}/03/1961", "", "unknown"][i % 4]
        rows.append({
            "NHS Number": numbers[i],
            "Surname": SURNAMES[i % 5] if i % 5 else ["12", "?", "n.k.", "X1", "3"][i // 10],  # 80 % names
            "Patient Name": f"{SURNAMES[i % 5]}, Ann" if i % 3 else "not known 2",
            "First Name": "Ann" if i % 2 else "",
            "familyName": "unknown" if i % 4 else "Brontë",
            "Given_Names": "Ann Marie",
            "Date of Birth": dob,
            "D.O.B": dob,
            "BirthDate": ["2001-01-01", "31/02/1990", "unknown"][i % 3],  # most not a date at all
            "Address Line 1": f"{i} High Street",
            "Email": f"a{i}@example.org",
            "Mobile": f"07700 900{i:03d}",
            "Hospital Number": f"RX{i:05d}",
            "MRN": str(1000 + i),
            "Clinic Date": f"{1 + i % 28}/0{1 + i % 9}/2025",
        })

    path = _clinic_export(tmp_path / "export.csv", rows)
    proposal = propose(path, today=TODAY)
    cols = _by_name(proposal)

    assert list(cols)[0] == "NHS Number" and proposal.nhs_number_column == "NHS Number"
    for name in ("Surname", "Patient Name", "First Name", "familyName", "Given_Names"):
        assert (cols[name].role, cols[name].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.DROP), name
    for name in ("Date of Birth", "D.O.B", "BirthDate"):
        assert (cols[name].role, cols[name].rule) == (Role.QUASI_IDENTIFIER, TransformKind.DOB_AGE_BAND), name
        assert cols[name].data_type == "string", name  # a third "unknown": declared a date, deliveries fail
    for name in ("Address Line 1", "Email", "Mobile"):
        assert (cols[name].role, cols[name].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.DROP), name
    for name in ("Hospital Number", "MRN"):
        assert (cols[name].role, cols[name].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.ID_TOKEN), name
    assert (cols["Clinic Date"].role, cols["Clinic Date"].rule) == (Role.QUASI_IDENTIFIER, TransformKind.DATE_SHIFT)
    assert cols["Date of Birth"].counts["dates_day_month_year"] == 13
    assert "Column Date of Birth: 12 values could not be read as dates (neither YYYY-MM-DD nor day/month/year); " \
        "the extract leaves them empty" in proposal.warnings
    shown = profiling.preview(path, proposal.to_schema("clinic", reference_date=TODAY), rows=4)
    assert shown["columns"] == ["patient_token", "Date of Birth", "D.O.B", "BirthDate", "Hospital Number", "MRN",
                                "Clinic Date"]
    assert [row[1] for row in shown["rows"]] == ["75-79", "65-69", None, None]  # 1950-03-01, 02/03/1961
    assert all(row[4].startswith("L") and row[4] != f"RX{i:05d}" for i, row in enumerate(shown["rows"]))


def test_propose_matches_headings_by_whole_words_not_letters(tmp_path):
    grades = ["Gold", "Silver", "Bronze"]  # words of letters, few distinct: names only if the heading says so
    rows = [{"Family name": grades[i % 3], "standard": grades[i % 3], "named_entity_count": grades[i % 3],
             "Drug Name": grades[i % 3], "surname_x": grades[i % 3]} for i in range(40)]

    cols = _by_name(propose(_write_csv(tmp_path / "c.csv", rows), today=TODAY))

    assert (cols["Family name"].role, cols["Family name"].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.DROP)
    assert (cols["surname_x"].role, cols["surname_x"].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.DROP)
    # "Drug Name" is no person's name by its heading; its values, every one a word, still make it one
    assert (cols["Drug Name"].role, cols["Drug Name"].reason) == (Role.DIRECT_IDENTIFIER, "person names")
    for name in ("standard", "named_entity_count"):
        assert (cols[name].role, cols[name].rule) == (Role.ATTRIBUTE, TransformKind.KEEP), name


@pytest.mark.parametrize(("heading", "words"), [
    ("Date of Birth", ("date", "of", "birth")), ("D.O.B.", ("d", "o", "b")), ("patientDOB", ("patient", "dob")),
    ("NHSNumber", ("nhs", "number")), ("Address1", ("address", "1")), ("first-name/alias", ("first", "name", "alias")),
    ("Nom de famille", ("nom", "de", "famille")),
])
def test_heading_words_split_at_punctuation_case_changes_and_digits(heading, words):
    assert profiling.heading_words(heading) == words


def test_propose_reads_names_in_any_script(tmp_path):
    names = ["Brontë", "Ó Súilleabháin", "Łukasz", "Zoë Ng", "Ngũgĩ", "Øyvind", "Chloé", "Søren", "Mélanie", "Åsa"]
    rows = [{"person": names[i % 10] + ("" if i < 10 else f"{'a' * (i // 10)}"), "seen": "yes"} for i in range(40)]

    cols = _by_name(propose(_write_csv(tmp_path / "c.csv", rows), today=TODAY))

    assert (cols["person"].role, cols["person"].rule, cols["person"].reason) == (
        Role.DIRECT_IDENTIFIER, TransformKind.DROP, "person names")


def _lab_export(path, rows=40):
    """A lab results export as trusts send them: censored results, NR, blood pressures, blanks, typos."""
    numbers = valid_nhs_numbers(rows, seed=8)
    hba1c = ["48", "<20", "52.5", "> 120", "NR", "", "not recorded", "61", "Unknown", "< 5"]
    pressure = ["120/80", "135 / 85", "NR", "142/91", "", "118/76", "128/84", "N/A", "110/70", "150/95"]
    lines = ["NHS Number,HbA1c (mmol/mol),BP,Creatinine,Comment"]
    for i in range(rows):
        result = hba1c[i % 10] if i != 37 else "see notes"  # one value a clerk typed
        lines.append(f"{numbers[i]},{result},{pressure[i % 10]},{60 + i}.{i % 10},{['', 'repeat', 'ok'][i % 3]}")
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


def test_propose_reads_numbers_with_markers_and_pairs_as_measurements(tmp_path):
    proposal = propose(_lab_export(tmp_path / "labs.csv"), today=TODAY)
    by = _by_name(proposal)

    hba1c, bp = by["HbA1c (mmol/mol)"], by["BP"]
    assert (hba1c.role, hba1c.rule, hba1c.data_type) == (Role.ATTRIBUTE, TransformKind.MEASUREMENT, "string")
    assert "censored values kept with their marker" in hba1c.reason and "become missing" in hba1c.reason
    assert hba1c.counts["numbers_with_marker"] == 12 and hba1c.counts["missing_words"] == 12
    assert (bp.rule, bp.reason.split(" with ")[0]) == (TransformKind.MEASUREMENT, "pairs of numbers (120/80)")
    assert bp.counts["number_pairs"] == 28
    assert (by["Creatinine"].rule, by["Creatinine"].data_type) == (TransformKind.KEEP, "decimal")
    assert "Column HbA1c (mmol/mol): 1 values are neither numbers, markers nor missing words; the extract leaves " \
           "them empty" in proposal.warnings
    assert "measurement" in profiling.RULE_LABELS[TransformKind.MEASUREMENT]


def test_whole_numbers_with_an_odd_missing_word_stay_whole_numbers_and_more_become_a_measurement(tmp_path):
    # One "Unknown" in twenty among counts: still whole numbers, as before the measurement rule.
    (tmp_path / "odd.csv").write_text("episodes\n" + "\n".join("Unknown" if i % 20 == 0 else str(i) for i in range(40)))
    # One in five: too many for a number column; a measurement keeps the numbers rather than a category.
    (tmp_path / "many.csv").write_text("episodes\n" + "\n".join("Unknown" if i % 5 == 0 else str(i) for i in range(40)))

    odd = _by_name(propose(tmp_path / "odd.csv", today=TODAY))["episodes"]
    many = _by_name(propose(tmp_path / "many.csv", today=TODAY))["episodes"]

    assert (odd.data_type, odd.rule) == ("integer", TransformKind.KEEP)
    assert (many.rule, many.data_type) == (TransformKind.MEASUREMENT, "string")


def test_preview_shows_measurements_as_the_extract_writes_them(tmp_path):
    path = _lab_export(tmp_path / "labs.csv")
    schema = propose(path, today=TODAY).to_schema("labs", reference_date=TODAY)

    shown = profiling.preview(path, schema, rows=10)

    hba1c, bp = shown["columns"].index("HbA1c (mmol/mol)"), shown["columns"].index("BP")
    assert [r[hba1c] for r in shown["rows"]] == ["48", "<20", "52.5", ">120", None, None, None, "61", None, "<5"]
    assert [r[bp] for r in shown["rows"]][:3] == ["120/80", "135/85", None]


def test_propose_never_takes_identifier_shaped_numbers_for_measurements(tmp_path):
    numbers = valid_nhs_numbers(30, seed=9)
    lines = ["ref,alt_ref,notes_2"]
    for i in range(30):
        bad_check = numbers[i][:9] + str((int(numbers[i][9]) + 1) % 10)  # ten digits, wrong check digit
        phone = ["07700 900123", "+44 (0)113 496 0000".replace("(0)", ""), "0117-496-0123", "NR"][i % 4]
        lines.append(f"{bad_check if i % 5 else 'NR'},{'<5' if i % 7 == 0 else bad_check},{phone}")
    (tmp_path / "ids.csv").write_text("\n".join(lines) + "\n")

    by = _by_name(propose(tmp_path / "ids.csv", today=TODAY))

    assert by["ref"].rule is not TransformKind.MEASUREMENT and by["alt_ref"].rule is not TransformKind.MEASUREMENT
    assert (by["notes_2"].role, by["notes_2"].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.DROP)
    assert by["notes_2"].reason == "phone numbers (by the values)"


@pytest.mark.parametrize(
    ("heading", "by_heading"),
    [
        ("Telephone", True), ("Tel no", True), ("Tel. No.", True), ("Mobile", True), ("Phone number", True),
        ("PhoneNumber", True), ("Contact number", True), ("contact_no", True), ("Home phone", True),
        ("Phone (mobile)", True), ("Mobile phone 2", True), ("Next of kin telephone", True), ("fax", True),
        ("Telephone consultation", False), ("Phone triage", False), ("Mobile unit", False),
        ("telephone_consultation_flag", False), ("Phone triage outcome", False), ("Contact", False),
    ],
)
def test_a_phone_heading_drops_only_a_column_that_names_a_phone_number(tmp_path, heading, by_heading):
    lines = ["clinic," + (f'"{heading}"' if "," in heading else heading)]
    lines += [f"C{i % 3},{['Yes', 'No', 'Y', 'N', '', 'yes'][i % 6]}" for i in range(30)]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")

    column = _by_name(propose(tmp_path / "c.csv", today=TODAY))[heading]

    if by_heading:
        assert (column.role, column.rule, column.reason) == (
            Role.DIRECT_IDENTIFIER, TransformKind.DROP, "phone numbers (by the heading)")
    else:
        assert (column.role, column.rule, column.reason) == (Role.ATTRIBUTE, TransformKind.KEEP, "codes or categories")


@pytest.mark.parametrize("heading", ["Telephone consultation", "Contact", "Notes 2", "Phone triage"])
def test_a_harmless_heading_over_phone_numbers_is_dropped_by_its_values(tmp_path, heading):
    phones = ["07700 900123", "(0113) 496 0000", "+44 7700 900456", "0117-496-0123", "01632 960 001",
              "unknown", "", "0044 20 7946 0958"]
    lines = ["clinic," + heading] + [f"C{i % 3},{phones[i % 8]}" for i in range(40)]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n")

    column = _by_name(propose(tmp_path / "c.csv", today=TODAY))[heading]

    assert (column.role, column.rule, column.reason) == (
        Role.DIRECT_IDENTIFIER, TransformKind.DROP, "phone numbers (by the values)")
    assert column.counts["phone_numbers"] == 30


def _referrals(path):
    """A referral export: some NHS numbers missing, mistyped (nine digits) or with a wrong check digit."""
    numbers = valid_nhs_numbers(12, seed=11)
    written = [numbers[0], "", numbers[2][:9], numbers[3][:9] + str((int(numbers[3][9]) + 1) % 10), numbers[4],
               " ", numbers[6], numbers[7], numbers[8], numbers[9], numbers[10], numbers[11]]
    lines = ["NHS No,Referral date,Priority"]
    lines += [f"{n},0{1 + i % 9}/03/2025,{['Routine', 'Urgent'][i % 2]}" for i, n in enumerate(written)]
    path.write_text("\n".join(lines) + "\n")
    return path, written


def test_preview_leaves_out_and_counts_the_rows_an_extract_leaves_out(tmp_path):
    path, written = _referrals(tmp_path / "referrals.csv")
    schema = propose(path, today=TODAY).to_schema("referrals", reference_date=TODAY)
    assert schema.nhs_number_column == "NHS No"

    shown = profiling.preview(path, schema, rows=5)

    assert len(shown["rows"]) == 5 and shown["read"] == 9  # rows 1, 5, 7, 8, 9 of the file
    # As the extract counts them: a blank of spaces is "not ten digits", an empty value "missing".
    assert shown["left_out"] == {"NHS number missing": 1, "NHS number invalid (not ten digits)": 2,
                                 "NHS number invalid (check digit)": 1}
    token = shown["columns"].index("patient_token")
    assert all(r[token] is not None and r[token].startswith("T") for r in shown["rows"])
    text = json.dumps(shown)
    assert written[2] not in text and written[3] not in text


def test_a_schema_keeping_the_nhs_number_column_raw_is_refused_before_any_preview(tmp_path):
    # This test used to preview such a schema (the number shown hidden); ADR 0068 refuses the schema.
    path, _ = _referrals(tmp_path / "referrals.csv")
    choices = {c.name: (c.role, c.rule) for c in propose(path, today=TODAY).columns}
    choices["NHS No"] = (Role.ATTRIBUTE, TransformKind.KEEP)

    with pytest.raises(SchemaError, match="'NHS No' holds the NHS number"):
        profiling.build_schema("referrals", choices, order=list(choices), nhs_number_column="NHS No",
                               reference_date=TODAY)


def test_preview_under_a_separate_namespace_shows_invalid_rows_by_their_invalid_token(tmp_path):
    path, written = _referrals(tmp_path / "referrals.csv")
    schema = propose(path, today=TODAY).to_schema("referrals", reference_date=TODAY)
    schema = dataclasses.replace(schema, invalid_nhs_policy=InvalidNhsPolicy.SEPARATE_NAMESPACE)

    shown = profiling.preview(path, schema, rows=5)

    tokens_shown = [r[shown["columns"].index("patient_token")] for r in shown["rows"]]
    assert shown["left_out"] == {} and shown["read"] == 5
    assert tokens_shown[1] is None and tokens_shown[2].startswith("INVALID-") and tokens_shown[3].startswith("INVALID-")
    assert written[2] not in json.dumps(shown)


@pytest.mark.parametrize("write", [
    lambda n: n,  # 9434765918
    lambda n: f"{n[:3]} {n[3:6]} {n[6:]}",  # 943 476 5918
], ids=["ten-digits", "spaced"])
def test_ten_digit_numbers_failing_the_check_digit_are_proposed_as_identifiers_not_kept(tmp_path, write):
    # Mistyped NHS numbers or a local id under a heading that names nothing: never "whole numbers, kept".
    numbers = valid_nhs_numbers(40, seed=12)
    lines = ["ref,count"] + [f"{write(n[:9] + str((int(n[9]) + 1) % 10))},{i}" for i, n in enumerate(numbers)]
    (tmp_path / "refs.csv").write_text("\n".join(lines) + "\n")

    by = _by_name(propose(tmp_path / "refs.csv", today=TODAY))

    assert (by["ref"].role, by["ref"].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.ID_TOKEN)
    assert by["ref"].reason.startswith("ten-digit numbers: identifiers")
    assert (by["count"].role, by["count"].rule) == (Role.ATTRIBUTE, TransformKind.KEEP)


def test_ten_digit_integers_in_parquet_are_proposed_as_identifiers(tmp_path):
    ids = [int(n[:9] + str((int(n[9]) + 1) % 10)) for n in valid_nhs_numbers(40, seed=13)]
    pq.write_table(pa.table({"patient_ref": pa.array(ids, pa.int64()), "n": pa.array(range(40), pa.int64())}),
                   tmp_path / "refs.parquet")

    by = _by_name(propose(tmp_path / "refs.parquet", today=TODAY))

    assert (by["patient_ref"].role, by["patient_ref"].rule) == (Role.DIRECT_IDENTIFIER, TransformKind.ID_TOKEN)
    assert (by["n"].role, by["n"].rule) == (Role.ATTRIBUTE, TransformKind.KEEP)


def test_a_column_with_only_a_few_ten_digit_numbers_keeps_its_own_proposal(tmp_path):
    lines = ["code"] + [("1234567890" if i < 5 else ["E11", "I10"][i % 2]) for i in range(40)]
    (tmp_path / "codes.csv").write_text("\n".join(lines) + "\n")

    code = _by_name(propose(tmp_path / "codes.csv", today=TODAY))["code"]

    assert (code.role, code.rule) == (Role.ATTRIBUTE, TransformKind.KEEP)
