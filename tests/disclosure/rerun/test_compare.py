"""A re-made file against the submitted one: tables by number within the tolerance, images by pixels,
anything else byte for byte; and which re-made file stands for a submitted one."""

from __future__ import annotations

from disclosure.rerun.compare import Tolerance, compare_file, find_remade

TABLE = b"region,F,M\nnorth,120,\nsouth,90.5,110\n"
PIXELS = {"width": 4, "height": 3, "pixels_sha256": "a" * 64}


def test_a_table_whose_numbers_agree_within_the_tolerance_is_reproduced() -> None:
    remade = b"region,F,M\nnorth,120.0000000001,\nsouth,90.5,110\n"

    result = compare_file("table", TABLE, remade)

    assert result["outcome"] == "reproduced" and result["how"] == "table"
    assert result["tolerance"] == {"rel": 1e-6, "abs": 1e-9}


def test_a_table_with_one_number_changed_differs_and_names_the_cell() -> None:
    remade = b"region,F,M\nnorth,120,\nsouth,93.5,110\n"

    result = compare_file("table", TABLE, remade)

    assert result["outcome"] == "differs"
    assert result["difference"] == "1 cell(s) differ beyond the tolerance; the largest numeric difference is 3"
    assert result["cells"] == [
        {"row": 2, "column": 1, "row_label": "south", "column_label": "F", "submitted": "90.5", "rerun": "93.5"}
    ]


def test_a_suppressed_cell_filled_in_by_hand_differs() -> None:
    result = compare_file("table", TABLE, b"region,F,M\nnorth,120,4\nsouth,90.5,110\n")

    assert result["outcome"] == "differs" and result["cells"][0]["submitted"] == ""


def test_a_table_of_another_shape_differs() -> None:
    result = compare_file("table", TABLE, b"region,F,M\nnorth,120,\n")

    assert result["outcome"] == "differs" and "shape" in result["difference"]


def test_a_changed_label_differs_even_when_every_number_agrees() -> None:
    result = compare_file("table", TABLE, TABLE.replace(b"south", b"east"))

    assert result["outcome"] == "differs"


def test_a_looser_tolerance_accepts_what_the_default_refuses() -> None:
    remade = b"region,F,M\nnorth,120.01,\nsouth,90.5,110\n"

    assert compare_file("table", TABLE, remade)["outcome"] == "differs"
    assert compare_file("table", TABLE, remade, tolerance=Tolerance(rel=1e-3))["outcome"] == "reproduced"


def test_images_are_compared_by_their_decoded_pixels_not_their_bytes() -> None:
    same = compare_file("image", b"png one", b"png two", submitted_pixels=PIXELS, remade_pixels=dict(PIXELS))
    other = compare_file(
        "image", b"png", b"png", submitted_pixels=PIXELS, remade_pixels={**PIXELS, "pixels_sha256": "b" * 64}
    )
    resized = compare_file("image", b"png", b"png", submitted_pixels=PIXELS, remade_pixels={**PIXELS, "width": 5})

    assert same["outcome"] == "reproduced"
    assert other["outcome"] == "differs" and other["difference"] == "the pixels differ (4x3 both)"
    assert resized["outcome"] == "differs" and "4x3 submitted but 5x3 re-made" in resized["difference"]


def test_an_image_that_could_not_be_decoded_is_not_called_reproduced() -> None:
    result = compare_file(
        "image", b"x", b"x", submitted_pixels={"error": "UnidentifiedImageError"}, remade_pixels=PIXELS
    )

    assert result["outcome"] == "not_rerun" and "submitted image could not be decoded" in result["difference"]


def test_text_is_compared_byte_for_byte() -> None:
    assert compare_file("text", b"model summary\n", b"model summary\n")["outcome"] == "reproduced"
    result = compare_file("text", b"model summary\n", b"model summary \n")
    assert result["outcome"] == "differs" and result["how"] == "bytes"


def test_the_remade_file_is_found_by_name_preferring_the_outputs_folder() -> None:
    made = {"outputs/t.csv": "1", "scratch/t.csv": "2", "outputs/fig.png": "3", "other/u.csv": "4", "a/u.csv": "5"}

    assert find_remade("t.csv", made) == ("outputs/t.csv", "")
    assert find_remade("fig.png", made) == ("outputs/fig.png", "")
    assert find_remade("missing.csv", made) == (None, "the re-run made no file named missing.csv")
    assert find_remade("u.csv", made)[0] is None and "2 files named u.csv" in find_remade("u.csv", made)[1]
