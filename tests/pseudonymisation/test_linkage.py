"""The person index core on synthetic people spread over three sources with realistic errors.

The truth is known because the test makes the people: precision and recall are measured over pairs of
records (a pair is "linked" when both records get the same person id) and must stay above floors.
"""

from __future__ import annotations

import json
import logging
import random
import re
from datetime import date, timedelta
from functools import cache
from itertools import combinations

import pytest

from pseudonymisation import nhs_number
from pseudonymisation.linkage import Link, LinkageSettings, Record, TooFewToTrain, link, link_records, train

PEOPLE = 2000
PRECISION_FLOOR = 0.99
RECALL_FLOOR = 0.97

_SYLLABLES = ["AB", "AL", "AN", "AR", "BE", "BO", "CA", "DA", "DE", "EL", "EN", "ER", "FI", "GA", "HA",
              "IN", "JO", "KA", "LA", "LE", "MA", "MI", "NA", "NO", "OL", "OR", "PA", "RA", "RI", "RO",
              "SA", "SE", "TA", "TH", "TO", "VA", "WI", "YA", "ZE", "SON", "TON", "LEY", "MAN", "FORD"]


def _valid_nhs(rng: random.Random, used: set[str]) -> str:
    while True:
        first_nine = "".join(str(rng.randrange(10)) for _ in range(9))
        digit = nhs_number.check_digit(first_nine)
        if digit is not None and (number := f"{first_nine}{digit}") not in used:
            used.add(number)
            return number


def _typo(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text))
    kind = rng.randrange(3)
    if kind == 0 and len(text) > 3:
        return text[:i] + text[i + 1:]
    if kind == 1:
        return text[:i] + rng.choice("ABCDEFGHIJKLMNOPRSTUVWY") + text[i + 1:]
    j = min(i + 1, len(text) - 1)
    chars = list(text)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def _postcode(rng: random.Random) -> str:
    return f"{rng.choice(['LS', 'M', 'B', 'NE', 'SW', 'CF', 'BS'])}{rng.randrange(1, 30)} " \
           f"{rng.randrange(1, 10)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}"


@cache
def synthetic(seed: int = 7) -> tuple[tuple[Record, ...], dict[tuple[str, str], int]]:
    """Records for PEOPLE people over hospital, GP and social care, and each record's true person."""
    rng = random.Random(seed)
    surnames = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.choice([2, 3]))) for _ in range(600)]
    first_names = ["".join(rng.choice(_SYLLABLES) for _ in range(2)) for _ in range(250)]
    # Common names are common: a Zipf-like weighting, so term frequencies matter.
    surname_weights = [1 / (rank + 1) for rank in range(len(surnames))]
    first_weights = [1 / (rank + 1) ** 0.7 for rank in range(len(first_names))]
    used: set[str] = set()
    people = []
    for _ in range(PEOPLE):
        people.append({
            "nhs": _valid_nhs(rng, used),
            "first": rng.choices(first_names, first_weights)[0],
            "surname": rng.choices(surnames, surname_weights)[0],
            "dob": date(1930, 1, 1) + timedelta(days=rng.randrange(33000)),
            "sex": rng.choice("MF"),
            "postcode": _postcode(rng),
        })
    # (source, share of people present, share of their records with an NHS number)
    sources = [("hospital", 1.0, 0.97), ("gp", 0.7, 0.9), ("social_care", 0.5, 0.2)]
    records: list[Record] = []
    truth: dict[tuple[str, str], int] = {}
    for source, present, with_number in sources:
        for person_id, p in enumerate(people):
            if rng.random() >= present:
                continue
            first, surname, dob, postcode = p["first"], p["surname"], p["dob"], p["postcode"]
            if rng.random() < 0.08:
                first = _typo(rng, first)
            if rng.random() < 0.08:
                surname = _typo(rng, surname)
            if rng.random() < 0.03:
                first, surname = surname, first
            if rng.random() < 0.02 and dob.day <= 12 and dob.day != dob.month:
                dob = date(dob.year, dob.day, dob.month)
            if rng.random() < 0.08:
                postcode = _postcode(rng)  # moved house
            number: str | None = p["nhs"] if rng.random() < with_number else None
            if number is not None and rng.random() < 0.01:
                number = rng.choice(people)["nhs"]  # a wrong but valid number: someone else's
            record_id = f"{source}-{len(records):06d}"
            records.append(Record(source, record_id, number, first.title(), surname.title(), dob,
                                  p["sex"], postcode))
            truth[(source, record_id)] = person_id
    return tuple(records), truth


def _pairs(groups: dict[int, list[tuple[str, str]]]) -> set[frozenset[tuple[str, str]]]:
    return {frozenset(pair) for members in groups.values() for pair in combinations(sorted(members), 2)}


def _quality(links: list[Link], truth: dict[tuple[str, str], int]) -> tuple[float, float]:
    found: dict[int, list[tuple[str, str]]] = {}
    for lk in links:
        found.setdefault(lk.person_id, []).append((lk.source, lk.record_id))
    real: dict[int, list[tuple[str, str]]] = {}
    for key, person in truth.items():
        real.setdefault(person, []).append(key)
    predicted, actual = _pairs(found), _pairs(real)
    true_positive = len(predicted & actual)
    return true_positive / len(predicted), true_positive / len(actual)


@cache
def _linked() -> tuple[Link, ...]:
    records, _ = synthetic()
    return tuple(link(list(records)))


@pytest.mark.slow
def test_link_synthetic_sources_meets_precision_and_recall_floors():
    _, truth = synthetic()
    precision, recall = _quality(list(_linked()), truth)
    assert precision >= PRECISION_FLOOR, precision
    assert recall >= RECALL_FLOOR, recall


@pytest.mark.slow
def test_link_records_without_nhs_number_join_their_person_probabilistically():
    records, truth = synthetic()
    links = {(lk.source, lk.record_id): lk for lk in _linked()}
    by_person: dict[int, set[int]] = {}
    for key, lk in links.items():
        by_person.setdefault(truth[key], set()).add(lk.person_id)
    without = [r for r in records if r.source == "social_care" and r.nhs_number is None]
    joined = [r for r in without
              if links[(r.source, r.record_id)].method == "probabilistic"
              and len(by_person[truth[(r.source, r.record_id)]]) == 1]
    assert len(joined) >= 0.9 * len(without)
    assert all(0.95 <= links[(r.source, r.record_id)].match_probability <= 1.0 for r in joined)


@pytest.mark.slow
def test_link_wrong_nhs_number_does_not_merge_two_people():
    records, truth = synthetic()
    links = {(lk.source, lk.record_id): lk for lk in _linked()}
    number_owner = {}
    for r in records:
        if r.nhs_number is not None and r.source == "hospital":
            number_owner.setdefault(r.nhs_number, truth[(r.source, r.record_id)])
    wrong = [r for r in records if r.nhs_number is not None
             and number_owner.get(r.nhs_number, truth[(r.source, r.record_id)]) != truth[(r.source, r.record_id)]]
    assert wrong, "the generator made no wrong NHS numbers"
    for r in wrong:
        owner_record = next(k for k, p in truth.items() if p == number_owner[r.nhs_number] and k[0] == "hospital")
        assert links[(r.source, r.record_id)].person_id != links[owner_record].person_id


@pytest.mark.slow
def test_link_same_input_gives_same_index():
    records, _ = synthetic()
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    again = {(lk.source, lk.record_id): lk for lk in link(shuffled)}
    assert [again[(lk.source, lk.record_id)] for lk in _linked()] == list(_linked())


@pytest.mark.slow
def test_link_one_duckdb_thread_gives_the_same_index_as_many():
    records, _ = synthetic()
    assert link(list(records), LinkageSettings(threads=1)) == list(_linked())


def test_link_valid_shared_nhs_number_links_deterministically():
    records = [
        Record("hospital", "h1", "943 476 5919", "Ada", "Lovelace", "1815-12-10", "F", "SW1A 1AA"),
        Record("gp", "g1", "9434765919", "Ada", "Lovelace", date(1815, 12, 10), "F", "sw1a1aa"),
        Record("gp", "g2", "9434765918", "Charles", "Babbage", "1791-12-26", "M", "SE1 7PB"),
    ]
    links = link(records)
    assert links[0].person_id == links[1].person_id != links[2].person_id
    assert [lk.method for lk in links] == ["deterministic", "deterministic", "singleton"]
    assert [lk.match_probability for lk in links] == [1.0, 1.0, None]


def test_link_conflicting_nhs_number_is_not_trusted():
    records = [
        Record("hospital", "h1", "9434765919", "Ada", "Lovelace", "1815-12-10", "F", "SW1A 1AA"),
        Record("hospital", "h2", "9434765919", "Ada", "Lovelace", "1815-12-10", "F", "SW1A 1AA"),
        Record("social_care", "s1", "9434765919", "Charles", "Babbage", "1791-12-26", "M", "SE1 7PB"),
    ]
    links = link(records)
    assert links[0].person_id == links[1].person_id != links[2].person_id
    assert links[2].method == "singleton"


def test_link_duplicate_record_keys_refused():
    record = Record("gp", "g1", None, "Ada", "Lovelace", "1815-12-10", "F", "SW1A 1AA")
    with pytest.raises(ValueError, match="share a source and record id"):
        link([record, record])


@pytest.mark.slow
def test_link_logs_no_identifiers(caplog):
    records, truth = synthetic()
    sample = [r for r in records if truth[(r.source, r.record_id)] < 400]
    with caplog.at_level(logging.DEBUG):
        link(sample, LinkageSettings(u_max_pairs=1e5))
    logged = "\n".join(r.getMessage() for r in caplog.records).upper()
    assert logged, "the run logged nothing, so this test could not fail"
    for r in sample:
        for value in (r.nhs_number, r.surname, r.postcode, str(r.date_of_birth), r.record_id):
            if value and len(value) >= 4:
                assert value.upper() not in logged


def test_link_too_few_records_to_train_is_refused_without_identifiers():
    records = [
        Record("hospital", "h1", "9434765919", "Ada", "Lovelace", "1815-12-10", "F", "SW1A 1AA"),
        Record("social_care", "s9", None, "Lovelace", "Ada", "1815-10-12", "F", "SW1A1AA"),
    ]
    with pytest.raises(TooFewToTrain) as refused:
        link(records)
    assert "LOVELACE" not in str(refused.value).upper()
    assert "1815" not in str(refused.value)


@pytest.mark.slow
def test_link_small_batch_with_a_model_trained_on_whole_sources_meets_floors():
    records, truth = synthetic()
    model = train(list(records))
    batch = [r for r in records if truth[(r.source, r.record_id)] < 50]
    # Trained on its own, this batch's model now converges (ADR 0035) but to a worse one (recall
    # about 0.93 when measured): a batch is linked with the model of the whole.
    precision, recall = _quality(link(batch, model=model), {(r.source, r.record_id): truth[(r.source, r.record_id)]
                                                            for r in batch})
    assert precision >= PRECISION_FLOOR, precision
    assert recall >= RECALL_FLOOR, recall
    saved = json.dumps(model).upper()
    for r in batch:
        for value in (r.nhs_number, r.surname, r.first_name, r.postcode, str(r.date_of_birth)):
            if value and len(value) >= 4:
                assert not re.search(rf"\b{re.escape(value.upper())}\b", saved), value


@pytest.mark.slow
def test_link_records_applies_a_linkage_officers_match_and_no_match():
    records, _ = synthetic()
    first = link_records(list(records), model=train(list(records)))
    assert first.candidates, "no pair fell in the uncertain band, so this test could not fail"
    assert sum(first.weight_histogram.values()) >= len(first.candidates)
    band = first.candidates[0]
    by_person: dict[int, list[Link]] = {}
    for lk in first.links:
        by_person.setdefault(lk.person_id, []).append(lk)
    together = next(m for m in by_person.values()
                    if len(m) == 2 and {lk.method for lk in m} == {"probabilistic"})
    apart = frozenset((lk.source, lk.record_id) for lk in together)

    decided = link_records(list(records), model=first.model,
                           decisions={frozenset((band.left, band.right)): "match", apart: "no_match"})
    after = {(lk.source, lk.record_id): lk for lk in decided.links}
    assert after[band.left].person_id == after[band.right].person_id
    assert {after[band.left].method, after[band.right].method} & {"clerical", "deterministic"}
    left, right = sorted(apart)
    assert after[left].person_id != after[right].person_id
    assert all({c.left, c.right} not in ({band.left, band.right}, set(apart)) for c in decided.candidates)


@cache
def _trained_model() -> str:
    records, _ = synthetic()
    return json.dumps(train(list(records)))


@pytest.mark.slow
def test_link_pair_sharing_only_a_transposed_date_of_birth_is_still_scored():
    # The two records share no date of birth, full name, postcode or surname prefix: only the
    # swapped day and month can bring them together (the blocking rule that replaced surname prefix
    # and year of birth, which did not scale to a million records a source). Scored, the pair
    # counts in the match weight distribution (it is above its floor, probability 0.001).
    records = [
        Record("hospital", "h1", None, "Margaret", "Okafor", "1960-03-07", "F", "LS6 2AB"),
        Record("social_care", "s1", None, "Margret", "Kofaor", "1960-07-03", "F", "M14 5QT"),
    ]
    result = link_records(records, model=json.loads(_trained_model()))
    assert sum(result.weight_histogram.values()) == 1
