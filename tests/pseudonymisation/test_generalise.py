import datetime as dt

import pyarrow as pa
import pytest

from pseudonymisation import generalise, tokens

from .conftest import valid_nhs_numbers

REFERENCE = dt.date(2024, 6, 30)


def test_dob_to_year_keeps_only_the_year():
    result = generalise.dob_to_year(pa.array([dt.date(1980, 12, 31), None]))

    assert result.to_pylist() == [1980, None]


def test_age_counts_a_birthday_only_once_it_has_passed():
    dobs = pa.array([dt.date(2000, 6, 30), dt.date(2000, 7, 1)])

    assert generalise.age_in_years(dobs, REFERENCE).to_pylist() == [24, 23]


def test_age_bands_group_everyone_over_ninety():
    dobs = pa.array([dt.date(2020, 1, 1), dt.date(1980, 1, 1), dt.date(1934, 6, 30), dt.date(1900, 1, 1)])

    bands = generalise.dob_to_age_band(dobs, REFERENCE)

    assert bands.to_pylist() == ["0-4", "40-44", "90+", "90+"]


def test_age_band_is_null_for_a_missing_or_future_birth():
    bands = generalise.dob_to_age_band(pa.array([None, dt.date(2030, 1, 1)], pa.date32()), REFERENCE)

    assert bands.to_pylist() == [None, None]


def test_age_bands_refuse_a_width_that_does_not_divide_the_top():
    with pytest.raises(ValueError):
        generalise.dob_to_age_band(pa.array([dt.date(2000, 1, 1)]), REFERENCE, width=7, top=90)


def test_dates_given_as_iso_strings_are_understood():
    assert generalise.dob_to_year(pa.array(["1975-03-04", "not a date"])).to_pylist() == [1975, None]


def test_as_dates_reads_iso_and_day_first_text_and_nothing_else():
    text = {
        "2020-04-03": dt.date(2020, 4, 3), "2020-4-3": dt.date(2020, 4, 3), "2020-04-03T10:15:00": dt.date(2020, 4, 3),
        "2020-04-03 23:30:00.5+01:00": dt.date(2020, 4, 3), "2020-04-03T10:15Z": dt.date(2020, 4, 3),
        "03/04/2020": dt.date(2020, 4, 3), "3/4/2020": dt.date(2020, 4, 3), " 03-04-2020 ": dt.date(2020, 4, 3),
        "03.04.2020": dt.date(2020, 4, 3), "29/02/2024": dt.date(2024, 2, 29), "31/12/1899": dt.date(1899, 12, 31),
        # neither form, or a day the calendar lacks: empty, never a neighbouring day
        "31/02/2020": None, "29/02/2023": None, "2020-02-30": None, "12/31/2020": None, "2020-13-01": None,
        "00/01/2020": None, "03/04-2020": None, "3/4/20": None, "20200403": None,
        "2020/04/03": None, "unknown": None, "": None, None: None,
    }

    together = generalise.as_dates(pa.array(list(text), pa.string()))

    assert dict(zip(text, together.to_pylist(), strict=True)) == text
    assert generalise.as_dates(pa.array(list(text), pa.large_string())).equals(together)
    # alone, "2020-04-03" takes the one-cast path, the others the patterns: the same dates either way
    assert [generalise.as_dates(pa.array([v], pa.string()))[0].as_py() for v in text] == list(text.values())


def test_day_first_text_gives_the_same_years_bands_and_shifts_as_dates(linkage_key, project_key):
    days = [dt.date(1941, 2, 11), dt.date(1999, 12, 31), dt.date(2024, 6, 30), dt.date(1930, 1, 5), None]
    day_first = pa.array([None if d is None else f"{d.day}/{d.month}/{d.year}" for d in days])
    mixed = pa.array([None if d is None else (d.isoformat() if i % 2 else d.strftime("%d.%m.%Y"))
                      for i, d in enumerate(days)])
    dates = pa.array(days, pa.date32())
    ps = tokens.internal_pseudonyms(pa.array(valid_nhs_numbers(5)), linkage_key)

    for text in (day_first, mixed):
        assert generalise.dob_to_year(text).to_pylist() == [1941, 1999, 2024, 1930, None]
        assert generalise.dob_to_age_band(text, REFERENCE).to_pylist() == ["80-84", "20-24", "0-4", "90+", None]
        assert generalise.shift_dates(text, ps, project_key).equals(generalise.shift_dates(dates, ps, project_key))
        assert generalise.days_from_index(text, dates).to_pylist() == [0, 0, 0, 0, None]


def test_date_shift_is_the_same_for_every_row_of_a_patient(linkage_key, project_key):
    numbers = valid_nhs_numbers(30)
    column = pa.array(numbers * 3)
    ps = tokens.internal_pseudonyms(column, linkage_key)
    start = dt.date(2021, 3, 1)

    shifted = generalise.shift_dates(pa.array([start] * len(column)), ps, project_key, max_days=60).to_pylist()

    shifts = [(d - start).days for d in shifted]
    assert shifts[:30] == shifts[30:60] == shifts[60:]
    assert all(-60 <= s <= 60 for s in shifts)
    assert len(set(shifts)) > 5


def test_date_shift_keeps_intervals_within_a_patient(linkage_key, project_key):
    ps = tokens.internal_pseudonyms(pa.array(["9434765919", "9434765919"]), linkage_key)
    dates = pa.array([dt.date(2020, 1, 1), dt.date(2020, 3, 15)])

    a, b = generalise.shift_dates(dates, ps, project_key).to_pylist()

    assert (b - a).days == (dt.date(2020, 3, 15) - dt.date(2020, 1, 1)).days


def test_date_shift_differs_between_projects(linkage_key, project_key):
    ps = tokens.internal_pseudonyms(pa.array(valid_nhs_numbers(50)), linkage_key)
    dates = pa.array([dt.date(2020, 1, 1)] * 50)

    ours = generalise.shift_dates(dates, ps, project_key)
    theirs = generalise.shift_dates(dates, ps, tokens.generate_key())

    assert not ours.equals(theirs)


def test_date_shift_drops_the_date_of_a_row_without_a_patient(linkage_key, project_key):
    ps = tokens.internal_pseudonyms(pa.array([None], pa.string()), linkage_key)

    assert generalise.shift_dates(pa.array([dt.date(2020, 1, 1)]), ps, project_key).to_pylist() == [None]


def test_days_from_index_is_signed():
    events = pa.array([dt.date(2020, 1, 10), dt.date(2019, 12, 25)])
    index = pa.array([dt.date(2020, 1, 1), dt.date(2020, 1, 1)])

    assert generalise.days_from_index(events, index).to_pylist() == [9, -7]


def test_postcodes_shrink_to_district_and_sector():
    codes = pa.array(["ls1 4ap", "SW1A 1AA", "M11AE", "nonsense", None])

    assert generalise.postcode_district(codes).to_pylist() == ["LS1", "SW1A", "M1", None, None]
    assert generalise.postcode_sector(codes).to_pylist() == ["LS1 4", "SW1A 1", "M1 1", None, None]


def test_scrub_removes_the_patients_own_identifiers_and_patterns():
    notes = pa.array(["Mrs Jane Doe of 12 Elm Road, LS1 4AP, NHS 943 476 5919, tel 07700 900123, jd@example.org"])
    names = pa.array(["Jane Doe"])
    addresses = pa.array(["12 Elm Road"])

    [scrubbed] = generalise.scrub_text(notes, [names, addresses]).to_pylist()

    for leaked in ["Jane", "Doe", "Elm Road", "LS1 4AP", "943 476 5919", "07700", "example.org"]:
        assert leaked not in scrubbed
    assert scrubbed.startswith("Mrs [REDACTED]")


def test_scrub_leaves_other_patients_words_alone_and_keeps_nulls():
    notes = pa.array(["Seen with Jane", None])

    scrubbed = generalise.scrub_text(notes, [pa.array(["John Smith", "Jane Roe"])]).to_pylist()

    assert scrubbed == ["Seen with Jane", None]


def test_local_id_tokens_are_stable_per_key_and_differ_between_keys() -> None:
    import pyarrow as pa

    ids = pa.array([12, 7, 12, None], pa.int64())

    one = generalise.local_id_tokens(ids, b"k" * 32).to_pylist()
    again = generalise.local_id_tokens(pa.array(["12", "7", "12", None]), b"k" * 32).to_pylist()
    other = generalise.local_id_tokens(ids, b"j" * 32).to_pylist()

    assert one == again and one[0] == one[2] and one[0] != one[1] and one[3] is None
    assert not set(one[:3]) & set(other[:3])
    assert all(t.startswith("L") and len(t) == 32 for t in one[:3])


def test_measurements_keep_markers_and_pairs_in_one_spelling_and_empty_the_rest():
    written = ["48", " < 5", ">120", "<= 0.1", "≥7", "≤ 3", "120 / 80", "5.0", "-2", "NR", "not recorded",
               "unknown", "", None, "see notes", "07700 900123", "1/2/2020"]

    kept = generalise.measurements(pa.array(written)).to_pylist()

    assert kept == ["48", "<5", ">120", "<=0.1", ">=7", "<=3", "120/80", "5.0", "-2", None, None,
                    None, None, None, None, None, None]


def test_measurements_of_a_numeric_column_are_its_numbers_as_text():
    assert generalise.measurements(pa.array([1.5, None, 120.0])).to_pylist() == ["1.5", None, "120"]
