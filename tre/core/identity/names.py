"""The one spelling of an email address and of a name, and the policy for new passwords."""

from __future__ import annotations

import unicodedata

from confusable_homoglyphs import confusables

from tre.core.identity.errors import IdentityError
from tre.core.passwords import context_words, password_problem


def normalise_email(email: str) -> str:
    """The one spelling of an address: NFKC, lower case, and plain ASCII only, so no two accounts
    can look alike through look-alike letters from another script, full-width forms, invisible or
    right-to-left override characters (they are refused with a clear error, not stripped)."""
    email = unicodedata.normalize("NFKC", email or "").strip().lower()
    if _has_hidden_characters(email) or not email.isascii():
        raise IdentityError(
            "Type the email address in plain (ASCII) letters and digits: it holds a look-alike letter from "
            "another alphabet, an invisible character or a right-to-left character"
        )
    if "@" not in email or len(email) > 320 or email.startswith("@") or email.endswith("@"):
        raise IdentityError("Enter an email address in the correct format, like name@example.nhs.uk")
    return email


def normalise_display_name(name: str) -> str:
    """A person's name in NFKC; any script, but not mixed with look-alikes from another script in
    one word (a Cyrillic 'а' inside a Latin name), and no invisible or direction-changing character."""
    name = " ".join(unicodedata.normalize("NFKC", name or "").split())
    if not name or len(name) > 200:
        raise IdentityError("Enter the person's name (200 characters at most)")
    if _has_hidden_characters(name):
        raise IdentityError("The name holds an invisible or right-to-left character: type it again")
    if any(confusables.is_dangerous(word) for word in name.split()):
        raise IdentityError("The name mixes look-alike letters from different alphabets: type it again")
    return name


def _has_hidden_characters(text: str) -> bool:
    # Cc control, Cf format (bidi overrides and isolates, zero-width joiners), Co private use,
    # Cs surrogates, Cn unassigned; line and paragraph separators.
    return any(unicodedata.category(c) in {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"} for c in text)


def check_password_policy(password: str, *, email: str = "", display_name: str = "") -> None:
    """Refuse a new password that is too short or long, easy to guess, or built on the person's
    name, email address or this service's name (tre/core/passwords.py)."""
    problem = password_problem(password, context_words(email, display_name))
    if problem is not None:
        raise IdentityError(problem)
