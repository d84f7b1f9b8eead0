import pyarrow as pa

from pseudonymisation import tokens
from pseudonymisation.optouts import OptOutList, apply_optouts


def test_rows_on_an_opt_out_list_are_removed_and_counted():
    parsed = tokens.parse_numbers(pa.array(["9434765919", "9434765870", "9434765919", None]))
    national = OptOutList.from_numbers("national", ["943 476 5919"])

    result = apply_optouts(parsed, [national])

    assert result.keep.tolist() == [False, True, False, True]
    assert result.removed_by_list == {"national": 2}
    assert result.removed == 2


def test_an_exempt_list_removes_nothing_but_says_what_it_would_have():
    parsed = tokens.parse_numbers(pa.array(["9434765919", "9434765870"]))
    lists = [
        OptOutList.from_numbers("national", ["9434765919"]),
        OptOutList.from_numbers("gp", ["9434765870"]),
    ]

    result = apply_optouts(parsed, lists, exempt={"national"})

    assert result.keep.tolist() == [True, False]
    assert result.removed_by_list == {"gp": 1}
    assert result.would_remove_by_exempt_list == {"national": 1}


def test_an_invalid_number_never_matches_a_list():
    parsed = tokens.parse_numbers(pa.array(["9434765918"]))

    result = apply_optouts(parsed, [OptOutList.from_numbers("national", ["9434765918"])])

    assert result.keep.tolist() == [True]


def test_an_opt_out_list_repr_holds_no_numbers():
    optout = OptOutList.from_numbers("national", ["9434765919"])

    assert "9434765919" not in repr(optout)
    assert len(optout) == 1
    assert optout.fingerprint() == OptOutList.from_numbers("national", ["943-476-5919"]).fingerprint()


def test_an_upload_is_read_as_one_number_a_line_with_an_optional_header_and_duplicates_counted():
    from pseudonymisation.optouts import parse_upload

    parsed = parse_upload("nhs_number,source\n943 476 5919,gp\n\n# a comment\n943-476-5870\n9434765919\n")

    assert parsed.ok
    assert parsed.numbers == ["9434765870", "9434765919"]
    assert (parsed.lines_read, parsed.duplicates, parsed.problems) == (3, 1, [])


def test_an_upload_reports_each_bad_line_by_number_and_reason_without_its_value():
    from pseudonymisation.optouts import UploadProblem, parse_upload

    parsed = parse_upload("9434765919\n9434765918\nabc\n94347659190\n")

    assert not parsed.ok
    assert parsed.problems == [
        UploadProblem(2, "the check digit is wrong"),
        UploadProblem(3, "not ten digits"),
        UploadProblem(4, "not ten digits"),
    ]
    assert "9434765918" not in repr(parsed)


def test_a_salted_fingerprint_differs_from_the_plain_hash_and_depends_on_the_salt():
    plain = OptOutList.from_numbers("local", ["9434765919"])
    salted = OptOutList.from_numbers("local", ["9434765919"], version="2", salt=b"s" * 16)
    other = OptOutList.from_numbers("local", ["9434765919"], salt=b"t" * 16)

    assert len({plain.fingerprint(), salted.fingerprint(), other.fingerprint()}) == 3
    assert salted.fingerprint() == OptOutList.from_numbers("local", ["943 476 5919"], salt=b"s" * 16).fingerprint()
    assert "73737373" not in repr(salted) and "salt" not in repr(salted)
