"""What a new password must be, wherever one is set (a reset link, an administrator creating an
account, the person changing their own): 12 to 1,024 characters of anything, not easy to guess,
and not built on words about the person or about this service.

"Easy to guess" is zxcvbn's estimate (the Dropbox estimator, kept as the ``zxcvbn`` package): it
knows about 30,000 common passwords and common words, names, keyboard patterns, dates, repeats and
l33t spellings, and a password it scores below 3 (fewer than 10^8 guesses) is refused. The
context words (``context_words``) are given to it as well, and a password holding one of them,
in any case, reversed or in l33t, is refused whatever its score; a word of fewer than four letters
(``tre``, ``nhs``) counts only where it stands alone (next to a non-letter, the end, or a change of
case as in ``MyTreLogin``), so ``street`` is not refused for ``tre``. zxcvbn reads at most 72
characters, so only the first 72 are checked: anything longer is a passphrase beyond these lists.

No breached-password corpus is consulted (that needs a set of hundreds of millions of hashes we
do not hold). No composition rules: any characters, any mix.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import Any

MIN_LENGTH = 12
MAX_LENGTH = 1024
MIN_SCORE = 3
ESTIMATED_CHARACTERS = 72  # zxcvbn's own limit
SHORT_WORD = 4
# zxcvbn keeps the context words of the call in a module-level dictionary, so two threads of one
# web process checking at once could mix one person's words into another's check.
_ZXCVBN_LOCK = threading.Lock()

# Words about this service that nobody's password may be built on (documented in
# docs/assurance/README.md, V6.1.2): its short name, the NHS, and the words of its full name.
SERVICE_WORDS = ("tre", "nhs", "trusted", "research", "environment", "sde")

# Parts of an address too general to be about anyone.
_GENERIC_DOMAIN_LABELS = frozenset({"com", "org", "net", "gov", "ac", "co", "uk", "nhs", "mail", "gmail"})


def context_words(email: str = "", display_name: str = "") -> list[str]:
    """The words a password must not be built on: the service's, and the person's name and email
    address, whole and in parts (pieces shorter than three characters are left out)."""
    email = (email or "").strip().lower()
    name = (display_name or "").strip().lower()
    local, _, domain = email.partition("@")
    words = list(SERVICE_WORDS)
    words += [email, local, name, re.sub(r"\s+", "", name)]
    words += re.split(r"[^\w]+|_", local)
    words += [label for label in domain.split(".") if label not in _GENERIC_DOMAIN_LABELS]
    words += re.split(r"[^\w]+", name)
    seen: dict[str, None] = {}
    for word in words:
        if len(word) >= 3:
            seen.setdefault(word, None)
    return list(seen)


def password_problem(password: str, context: Iterable[str] = ()) -> str | None:
    """Why ``password`` may not be used, in words safe to show (never the password), or None."""
    if len(password) < MIN_LENGTH:
        return f"Password must be at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"Password must be {MAX_LENGTH} characters or fewer"
    # Imported here: loading zxcvbn's word lists takes a tenth of a second.
    from zxcvbn import matching, zxcvbn

    checked = password[:ESTIMATED_CHARACTERS]
    words = [w.lower() for w in context if w]
    ranked = {"context": matching.build_ranked_dict(words)}
    found: list[dict[str, Any]] = (
        matching.dictionary_match(checked, ranked)
        + matching.reverse_dictionary_match(checked, ranked)
        + matching.l33t_match(checked, ranked)
    )
    if any(len(m["matched_word"]) >= SHORT_WORD or _stands_alone(checked, m["i"], m["j"]) for m in found):
        return (
            "Password must not contain your name, your email address or the name of this service "
            "(such as TRE, NHS or research)"
        )
    with _ZXCVBN_LOCK:
        estimate = zxcvbn(checked, user_inputs=words)
    if estimate["score"] < MIN_SCORE:
        warning = estimate["feedback"].get("warning") or "It is too easy to guess."
        return (
            f"Choose a password that is harder to guess. {warning.rstrip('.')}. "
            "Three or four unrelated words, or one from a password manager, work well"
        )
    return None


def _stands_alone(password: str, i: int, j: int) -> bool:
    """Whether password[i..j] is a word of its own rather than letters inside a longer word."""
    before = password[i - 1] if i > 0 else ""
    after = password[j + 1] if j + 1 < len(password) else ""
    starts = not before.isalpha() or (before.islower() and password[i].isupper())
    ends = not after.isalpha() or (after.isupper() and password[j].islower())
    return starts and ends
