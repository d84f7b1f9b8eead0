"""Which page of a long list a request asks for, and what a page says of the whole (tre/web/paging.py)."""

from __future__ import annotations

import pytest
from werkzeug.exceptions import BadRequest

from tre.web.paging import Page, requested_page


@pytest.mark.parametrize(
    ("page", "shown", "last", "previous", "following"),
    [
        (Page(1, 50, 0), (0, 0), 1, False, False),
        (Page(1, 50, 50), (1, 50), 1, False, False),
        (Page(1, 50, 101), (1, 50), 3, False, True),
        (Page(2, 50, 101), (51, 100), 3, True, True),
        (Page(3, 50, 101), (101, 101), 3, True, False),
    ],
)
def test_a_page_says_which_items_it_shows_and_whether_pages_come_before_or_after(
    page: Page, shown: tuple[int, int], last: int, previous: bool, following: bool
) -> None:
    assert (page.first_shown, page.last_shown) == shown
    assert (page.last, page.has_previous, page.has_next, page.past_the_end) == (last, previous, following, False)


def test_a_page_past_the_end_shows_nothing_and_leads_back() -> None:
    page = Page(7, 50, 101)

    assert page.past_the_end and page.has_previous and not page.has_next
    assert page.offset >= page.total


@pytest.mark.parametrize(("asked", "number"), [({}, 1), ({"page": ""}, 1), ({"page": "1"}, 1), ({"page": "12"}, 12)])
def test_the_page_asked_for_is_a_whole_number_from_one(asked: dict[str, str], number: int) -> None:
    assert requested_page(asked) == number


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "1.5", "2e3", " 2", "\u0661", "1234567890", "9" * 5000])
def test_a_page_that_is_not_a_whole_number_from_one_is_refused(raw: str) -> None:
    with pytest.raises(BadRequest, match="whole number from 1"):
        requested_page({"page": raw})
