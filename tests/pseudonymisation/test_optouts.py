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
