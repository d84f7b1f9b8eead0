"""NHS numbers: normalise, validate with the modulus-11 check digit, and make valid ones.

Pure functions with no dependency beyond the standard library, so a notebook, the extract pipeline
and the synthetic data generator all agree on what a valid NHS number is.

The check digit: multiply the first nine digits by the weights 10, 9, ... 2 and sum; the check digit
is 11 - (sum mod 11), where 11 means 0 and 10 means the nine digits can never form a valid number.
"""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[\s\-]")
_TEN_DIGITS = re.compile(r"\d{10}")
_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def normalise(value: object) -> str | None:
    """Return the ten digits of ``value`` with spaces and dashes removed, or None if it is not ten digits.

    Integers are accepted (a number read from a spreadsheet loses nothing: NHS numbers never start
    with a zero that matters, but a leading zero is restored by zero-padding to ten digits).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if value < 0:
            return None
        text = f"{value:010d}"
    elif isinstance(value, str):
        text = _SEPARATORS.sub("", value)
    else:
        return None
    return text if _TEN_DIGITS.fullmatch(text) else None


def check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None when no tenth digit can make them valid."""
    if len(first_nine) != 9 or not first_nine.isdigit():
        raise ValueError("check_digit needs exactly nine digits")
    total = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS, strict=True))
    digit = 11 - (total % 11)
    if digit == 11:
        return 0
    if digit == 10:
        return None
    return digit


def is_valid(value: object) -> bool:
    """True when ``value`` normalises to ten digits whose last is the modulus-11 check digit."""
    digits = normalise(value)
    if digits is None:
        return False
    return check_digit(digits[:9]) == int(digits[9])


def format_spaced(value: object) -> str:
    """Render a valid NHS number in the 3-3-4 form people read (``943 476 5919``)."""
    digits = normalise(value)
    if digits is None or not is_valid(digits):
        raise ValueError("not a valid NHS number")
    return f"{digits[:3]} {digits[3:6]} {digits[6:]}"
