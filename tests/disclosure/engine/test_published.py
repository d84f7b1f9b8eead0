"""Reading published count tables: label columns, blanks and suppression markers are never counts."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from disclosure.engine.published import UnreadableTable, read_published_table
from disclosure.engine.tables import check_frequency_table, check_published_counts

# What ACRO (pandas to_csv) writes for crosstab([year, grant_type], survivor) with suppression: two label
# columns, withheld cells left blank.
ACRO_TWO_LABEL_COLUMNS = b"""year,grant_type,Dead in 2015,Alive in 2015
2010,G,,
2010,N,59.0,
2010,R,42.0,31.0
2011,G,,
2011,N,62.0,
2011,R,45.0,33.0
"""


def test_acro_csv_label_columns_are_labels_and_blanks_are_withheld():
    table = read_published_table(ACRO_TWO_LABEL_COLUMNS)

    assert table.row_dims == ["year", "grant_type"]
    assert table.values.shape == (6, 2)
    assert table.withheld == 6
    assert table.values.loc[(2010, "R"), "Alive in 2015"] == 31.0


def test_withheld_cells_are_not_flagged_as_zeros_or_small_counts():
    table = read_published_table(ACRO_TWO_LABEL_COLUMNS)

    verdict = check_published_counts(table.values, mitigation="none").verdict

    assert verdict["withheld_cells"] == 6
    assert not any(r.startswith("zeros") for r in verdict["reasons"])
    assert not any(c.get("rule") == "zeros" and c.get("flagged") for c in verdict.get("criteria", []))


def test_r_write_csv_with_blank_first_header_and_na():
    csv = b'"","F","M"\n"North",40,35\n"South",NA,NA\n"East",45,60\n'
    table = read_published_table(csv)
    assert list(table.values.index) == ["North", "South", "East"]
    assert table.withheld == 2
    assert table.values.loc["East", "M"] == 60


@pytest.mark.parametrize("marker", ["*", "c", "[c]", "x", "..", "<10", "< 5", "suppressed", "NA", "nan", "-"])
def test_suppression_markers_are_withheld(marker):
    csv = f"region,F,M\nNorth,40,{marker}\nSouth,50,61\n".encode()
    table = read_published_table(csv)
    assert np.isnan(table.values.loc["North", "M"])
    assert table.withheld == 1


def test_pandas_multi_level_header():
    frame = pd.DataFrame({"region": list("nnsss"), "sex": list("fmfmm"), "age": list("ababa")})
    csv = pd.crosstab(frame.region, [frame.sex, frame.age]).to_csv().encode()
    table = read_published_table(csv)
    assert table.row_dims == ["region"] and table.col_dims == ["sex", "age"]
    assert table.values.shape == (2, 3)
    assert table.values.loc["s", ("m", "a")] == 1 and table.values.to_numpy().sum() == 5


def test_margins_are_split_off_and_checked():
    csv = b"region,F,M,All\nNorth,40,35,75\nSouth,50,61,111\nAll,90,96,186\n"
    table = read_published_table(csv)
    assert table.values.shape == (2, 2)
    assert table.grand_total == 186 and table.row_margin.tolist() == [75, 111]
    assert table.notes == []
    wrong = read_published_table(b"region,F,M,Total\nNorth,40,35,76\nSouth,50,61,111\n")
    assert wrong.notes == ["the total column does not equal the sum of its cells"]


def test_numeric_labels_named_by_the_specification_are_labels():
    csv = b"year,G,N\n2010,12,30\n2011,14,33\n"
    table = read_published_table(csv, n_row_dims=1, n_col_dims=1, dims=["year", "grant_type"])
    assert list(table.values.index) == [2010, 2011]
    assert table.col_dims == ["grant_type"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"just one line of prose\n", "fewer than two rows"),
        (b"region,F,M\nNorth,40,lots\nSouth,50,61\nEast,45,60\n", "neither a number nor a suppression marker"),
        (b"region,F,M\nNorth,40\n", "different numbers of cells"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b"a,b\nx,y\n", "every column holds labels"),
    ],
)
def test_files_that_cannot_be_read_with_confidence_are_refused(content, why):
    with pytest.raises(UnreadableTable, match=why):
        read_published_table(content)


def test_a_layout_that_contradicts_the_specification_is_refused():
    with pytest.raises(UnreadableTable, match="specification"):
        read_published_table(ACRO_TWO_LABEL_COLUMNS, n_row_dims=1, n_col_dims=1)


def test_session_csv_of_acro_test_data_reads_back_exactly(charity_data):
    result = check_frequency_table(charity_data, ["year", "grant_type"], mitigation="suppress")
    csv = result.table(released=True).to_csv().encode()
    table = read_published_table(csv)
    released = result.table(released=True)
    assert table.values.shape == released.shape
    same = np.isclose(table.values.to_numpy(), released.to_numpy(), equal_nan=True)
    assert same.all()
    assert table.withheld == int(released.isna().to_numpy().sum())


# --- files written by ACRO 1.0.2 itself (tests/disclosure/engine/data/acro/README.md) ---------------------
ACRO_FILES = Path(__file__).parent / "data" / "acro"


def _acro(name: str) -> bytes:
    return (ACRO_FILES / name).read_bytes()


def test_acro_crosstab_with_two_label_columns_reads_years_as_labels_and_blanks_as_withheld():
    table = read_published_table(_acro("output_0_0.csv"))

    assert table.row_dims == ["year", "grant_type"]
    assert table.values.shape == (24, 2)  # not 3 columns: grant_type is a label, not 24 zero counts
    assert table.withheld == 24  # blank cells are withheld, not zeros
    assert table.values.loc[(2012, "R"), "Dead in 2015"] == 47
    verdict = check_published_counts(table.values, mitigation="none").verdict
    assert verdict["withheld_cells"] == 24
    assert not any(r.startswith("zeros") for r in verdict["reasons"])


def test_acro_crosstab_with_margins_splits_them_off_and_they_add_up():
    table = read_published_table(_acro("output_1_0.csv"))
    assert table.values.shape == (6, 4)
    assert table.grand_total == 918 and table.col_margin.tolist() == [90, 354, 426, 48]
    assert table.notes == []


def test_acro_pivot_table_header_naming_the_value_column_is_not_a_dimension():
    table = read_published_table(_acro("output_2_0.csv"))
    assert table.row_dims == ["grant_type"] and table.col_dims == ["year"]
    assert list(table.values.columns) == [2010, 2011, 2012, 2013, 2014, 2015]
    assert table.values.loc["N", 2010] == 5
    spec_read = read_published_table(_acro("output_2_0.csv"), n_row_dims=1, n_col_dims=1)
    assert spec_read.values.equals(table.values)


def test_acro_two_level_header():
    table = read_published_table(_acro("output_3_0.csv"))
    assert table.row_dims == ["year"] and table.col_dims == ["grant_type", "survivor"]
    assert table.values.shape == (6, 8) and table.withheld == 24
    assert table.values.loc[2015, ("R", "Dead in 2015")] == 47


def test_a_row_withheld_whole_under_a_plain_header_is_a_row_not_a_header():
    table = read_published_table(b"region,F,M\nnorth,40,35\nsouth,,\nwest,,\n")
    assert list(table.values.index) == ["north", "south", "west"]
    assert table.withheld == 4
