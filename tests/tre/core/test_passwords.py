"""The new-password policy (tre/core/passwords.py): length, common passwords, context words."""

from __future__ import annotations

import pytest
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from tre.core.passwords import MAX_LENGTH, MIN_LENGTH, SERVICE_WORDS, context_words, password_problem

ADA = context_words("ada.lovelace@analytical.example.nhs.uk", "Ada King Lovelace")


def test_every_common_password_long_enough_to_be_allowed_at_all_is_refused() -> None:
    # ASVS asks for the 3,000 most common; zxcvbn's list holds 30,000. Shorter ones fail on length.
    common = FREQUENCY_LISTS["passwords"]
    long_enough = [p for p in common if len(p) >= MIN_LENGTH]

    refused = [p for p in long_enough if password_problem(p) is not None]

    assert len(common) == 30_000
    assert len(long_enough) > 200
    assert refused == long_enough
    assert all(password_problem(p) is not None for p in common[:3000])


@pytest.mark.parametrize(
    "password",
    ["password1234", "Password1234!", "qwertyuiop123", "aaaaaaaaaaaaaaaa", "abcdefghijklmnop", "p4ssw0rd12345",
     "iloveyou2024!", "123456789012", "drowssap12345"],
)
def test_common_patterns_and_their_variants_are_refused_with_advice(password: str) -> None:
    problem = password_problem(password)

    assert problem is not None and problem.startswith("Choose a password that is harder to guess")
    assert password not in problem


def test_context_words_are_the_service_and_the_persons_name_and_address_in_parts() -> None:
    assert set(SERVICE_WORDS) <= set(ADA)
    for word in ("ada.lovelace@analytical.example.nhs.uk", "ada.lovelace", "lovelace", "king", "ada",
                 "adakinglovelace", "analytical", "example"):
        assert word in ADA, word
    assert "uk" not in ADA and "nhs.uk" not in ADA  # too general, or too short to be about anyone


@pytest.mark.parametrize(
    "password",
    [
        "Lovelace-quartz-lamp-77",  # surname, any case
        "quartz-ECALEVOL-lamp-77",  # reversed
        "L0v3l4c3-quartz-lamp-77",  # l33t
        "quartz-lamp-ada.lovelace",  # the address's local part
        "Analytical-quartz-lamp-7",  # a label of the address's domain
        "tre-quartz-lamp-9051",  # the service's short name standing alone
        "quartz-lamp-NHS-9051",
        "MyTreQuartzLamp9051",  # standing alone by case
        "Trusted-Research-Lamp",
        "environment-lamp-9051",
    ],
)
def test_passwords_holding_a_context_word_are_refused_whatever_their_strength(password: str) -> None:
    problem = password_problem(password, ADA)

    assert problem is not None and "must not contain your name" in problem
    assert password not in problem


@pytest.mark.parametrize(
    "password",
    [
        "correct horse battery staple",
        "street-quartz-lamp-9051",  # "tre" inside a longer word does not count
        "extreme quartz lamp 9051",
        "q7#Vd9!mZ2@pL",
        "  Ünïcödé & spaces, no rules: " + "x" * 70 + "  ",
        "marmalade otter violin cascade " * 30,
    ],
)
def test_strong_passwords_without_context_words_are_accepted(password: str) -> None:
    assert password_problem(password, ADA) is None


def test_length_limits_come_first_and_say_the_number() -> None:
    assert password_problem("q7#Vd9!mZ2@") == f"Password must be at least {MIN_LENGTH} characters"
    assert password_problem("q7#Vd9!mZ2@pL" * 100) == f"Password must be {MAX_LENGTH} characters or fewer"


def test_without_a_person_only_the_services_words_count() -> None:
    service_only = context_words()

    assert service_only == list(SERVICE_WORDS)
    assert password_problem("Lovelace-quartz-lamp-77", service_only) is None
    assert password_problem("tre-quartz-lamp-9051", service_only) is not None
