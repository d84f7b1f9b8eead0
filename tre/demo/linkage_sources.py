"""Seeded synthetic sources for the person index: one region's people as hospital, GP and social
care records, with the errors real records carry, at stated rates, and the truth kept aside.

Every record gets, independently, each error at its rate in ``ErrorRates``: a typo in the first name
or the surname, a nickname for the first name, first name and surname swapped, day and month of birth
transposed (when the day is 12 or less), a different postcode (moved house), no NHS number (a rate per
source: most social care records have none) and, among records that keep one, someone else's valid
number. The same ``people``, ``seed`` and rates give the same records; the truth maps each
``(source, record_id)`` to the index of its person, for measuring precision and recall.

Everything is synthetic: names are common English given names with their nicknames and surnames
built from syllables (so the tail of rare surnames is long, as it is in life); NHS numbers are random
with a valid check digit; postcodes use real outward codes with random inward codes.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pseudonymisation import nhs_number
from pseudonymisation.linkage import Record

NICKNAMES: dict[str, tuple[str, ...]] = {
    "William": ("Bill", "Will", "Billy"), "Robert": ("Bob", "Rob", "Bobby"), "Elizabeth": ("Liz", "Beth", "Lizzie"),
    "Margaret": ("Maggie", "Peggy", "Meg"), "James": ("Jim", "Jimmy", "Jamie"), "Richard": ("Dick", "Rich"),
    "Catherine": ("Kate", "Cathy"), "Thomas": ("Tom", "Tommy"), "Michael": ("Mike", "Mick"),
    "Jennifer": ("Jenny", "Jen"), "Edward": ("Ted", "Ed", "Eddie"), "Susan": ("Sue", "Susie"),
    "Anthony": ("Tony",), "Patricia": ("Pat", "Trish"), "Christopher": ("Chris",), "Deborah": ("Debbie", "Deb"),
    "Alexander": ("Alex", "Sandy"), "Victoria": ("Vicky", "Tori"), "Daniel": ("Dan", "Danny"),
    "Rebecca": ("Becky", "Becca"), "Joseph": ("Joe",), "Samantha": ("Sam",), "Matthew": ("Matt",),
    "Jessica": ("Jess",), "Andrew": ("Andy", "Drew"), "Katherine": ("Katie", "Kath"), "Nicholas": ("Nick",),
    "Alison": ("Ali",), "Benjamin": ("Ben",), "Charlotte": ("Charlie", "Lottie"), "Jonathan": ("Jon",),
    "Frances": ("Fran",), "Stephen": ("Steve",), "Dorothy": ("Dot", "Dottie"), "Timothy": ("Tim",),
    "Josephine": ("Jo", "Josie"), "Peter": ("Pete",), "Gillian": ("Gill",), "David": ("Dave",),
    "Theresa": ("Tess", "Terri"),
}
OTHER_FIRST_NAMES = (
    "Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Grace", "Leo", "Freya",
    "Arthur", "Lily", "Muhammad", "Emily", "Oscar", "Ivy", "Charles", "Florence", "Henry", "Sophia", "Jacob",
    "Evie", "Alfie", "Poppy", "Freddie", "Ella", "Archie", "Rosie", "Theo", "Sienna", "Joshua", "Phoebe",
    "Lucas", "Harper", "Isaac", "Willow", "Ethan", "Daisy", "Mohammed", "Aisha", "Priya", "Arjun", "Fatima",
    "Kwame", "Chloe", "Ruth", "Sean", "Niamh", "Callum", "Eilidh", "Rhys", "Cerys", "Gareth", "Siobhan",
)
_SYLLABLES = ("AB", "AL", "AN", "AR", "BE", "BO", "CA", "DA", "DE", "EL", "EN", "ER", "FI", "GA", "HA", "IN",
              "JO", "KA", "LA", "LE", "MA", "MI", "NA", "NO", "OL", "OR", "PA", "RA", "RI", "RO", "SA", "SE",
              "TA", "TH", "TO", "VA", "WI", "YA", "ZE", "SON", "TON", "LEY", "MAN", "FORD", "WELL", "HAM")
_OUTWARD = ("LS1", "LS6", "LS11", "M1", "M14", "M20", "B5", "B33", "NE1", "NE6", "SW1A", "SW9", "CF10", "CF24",
            "BS1", "BS5", "L8", "L15", "S1", "S10", "NG7", "LE1", "BD3", "HU5", "YO1", "OX4", "CB1", "EX4")
_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"


@dataclass(frozen=True)
class SourceSpec:
    """One source: its name, the share of people in it, and the share of its records with a number."""

    name: str
    coverage: float
    with_nhs_number: float


DEFAULT_SOURCES = (
    SourceSpec("hospital", 1.0, 0.97),
    SourceSpec("gp", 0.7, 0.9),
    SourceSpec("social_care", 0.5, 0.2),
)

# The benchmark shape: every person in both of two sources (so N people are N x N records),
# numbers on most hospital records and few social care ones.
TWO_SOURCES = (
    SourceSpec("hospital", 1.0, 0.97),
    SourceSpec("social_care", 1.0, 0.2),
)


@dataclass(frozen=True)
class ErrorRates:
    """The chance, per record, of each error (the stated rates of the generator)."""

    first_name_typo: float = 0.08
    surname_typo: float = 0.08
    nickname: float = 0.05
    swapped_names: float = 0.03
    transposed_day_month: float = 0.02
    moved_house: float = 0.08
    wrong_nhs_number: float = 0.01


@dataclass
class LinkableSources:
    tables: dict[str, pa.Table]
    truth: dict[tuple[str, str], int]
    rates: ErrorRates
    sources: tuple[SourceSpec, ...]
    people: int
    seed: int
    made_errors: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"people": self.people, "seed": self.seed, "rates": asdict(self.rates),
                "sources": [asdict(s) for s in self.sources],
                "records": {n: t.num_rows for n, t in self.tables.items()}, "errors_made": self.made_errors}


def _valid_number(rng: random.Random, used: set[str]) -> str:
    while True:
        nine = f"{rng.randrange(100_000_000, 1_000_000_000):09d}"
        check = nhs_number.check_digit(nine)
        if check is not None and (number := f"{nine}{check}") not in used:
            used.add(number)
            return number


def _typo(rng: random.Random, text: str) -> str:
    i = rng.randrange(len(text))
    kind = rng.randrange(3)
    if kind == 0 and len(text) > 3:
        return text[:i] + text[i + 1:]
    if kind == 1:
        return text[:i] + rng.choice("abcdefghijklmnoprstuvwy") + text[i + 1:]
    j = min(i + 1, len(text) - 1)
    chars = list(text)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def _postcode(rng: random.Random) -> str:
    return f"{rng.choice(_OUTWARD)} {rng.randrange(1, 10)}{rng.choice(_INWARD_LETTERS)}{rng.choice(_INWARD_LETTERS)}"


def generate(
    people: int,
    seed: int = 20,
    rates: ErrorRates | None = None,
    sources: tuple[SourceSpec, ...] = DEFAULT_SOURCES,
) -> LinkableSources:
    """``people`` synthetic people spread over ``sources``, each record with errors at ``rates``."""
    if people < 1:
        raise ValueError("people must be at least 1")
    rates = rates or ErrorRates()
    rng = random.Random(seed)  # noqa: S311  # nosec B311 - synthetic data, seeded on purpose
    surnames = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).title()
                for _ in range(max(600, people // 4))]
    firsts = [*NICKNAMES, *OTHER_FIRST_NAMES]
    surname_weights = [1 / (rank + 1) ** 0.8 for rank in range(len(surnames))]
    first_weights = [1 / (rank + 1) ** 0.5 for rank in range(len(firsts))]
    surname_picks = rng.choices(surnames, surname_weights, k=people)
    first_picks = rng.choices(firsts, first_weights, k=people)
    used: set[str] = set()
    numbers = [_valid_number(rng, used) for _ in range(people)]
    births = [dt.date(1925, 1, 1) + dt.timedelta(days=rng.randrange(36_000)) for _ in range(people)]
    sexes = [rng.choice("MF") for _ in range(people)]
    homes = [_postcode(rng) for _ in range(people)]
    errors = {k: 0 for k in asdict(rates)}
    errors["missing_nhs_number"] = 0
    tables: dict[str, pa.Table] = {}
    truth: dict[tuple[str, str], int] = {}
    for spec in sources:
        cols: dict[str, list[Any]] = {c: [] for c in ("record_id", "nhs_number", "first_name", "surname",
                                                       "date_of_birth", "sex", "postcode", "seen_on")}
        for person in range(people):
            if rng.random() >= spec.coverage:
                continue
            first, surname, dob, home = first_picks[person], surname_picks[person], births[person], homes[person]
            if first in NICKNAMES and rng.random() < rates.nickname:
                first, errors["nickname"] = rng.choice(NICKNAMES[first]), errors["nickname"] + 1
            if rng.random() < rates.first_name_typo:
                first, errors["first_name_typo"] = _typo(rng, first), errors["first_name_typo"] + 1
            if rng.random() < rates.surname_typo:
                surname, errors["surname_typo"] = _typo(rng, surname), errors["surname_typo"] + 1
            if rng.random() < rates.swapped_names:
                first, surname = surname, first
                errors["swapped_names"] += 1
            if rng.random() < rates.transposed_day_month and dob.day <= 12 and dob.day != dob.month:
                dob, errors["transposed_day_month"] = dt.date(dob.year, dob.day, dob.month), errors[
                    "transposed_day_month"] + 1
            if rng.random() < rates.moved_house:
                home, errors["moved_house"] = _postcode(rng), errors["moved_house"] + 1
            number: str | None = numbers[person]
            if rng.random() >= spec.with_nhs_number:
                number, errors["missing_nhs_number"] = None, errors["missing_nhs_number"] + 1
            elif rng.random() < rates.wrong_nhs_number:
                number, errors["wrong_nhs_number"] = numbers[rng.randrange(people)], errors["wrong_nhs_number"] + 1
            record_id = f"{spec.name[:2].upper()}{len(cols['record_id']) + 1:08d}"
            cols["record_id"].append(record_id)
            cols["nhs_number"].append(number)
            cols["first_name"].append(first)
            cols["surname"].append(surname)
            cols["date_of_birth"].append(dob)
            cols["sex"].append(sexes[person])
            cols["postcode"].append(home)
            cols["seen_on"].append(dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(700)))
            truth[(spec.name, record_id)] = person
        tables[spec.name] = pa.table({
            **{c: pa.array(v, pa.string()) for c, v in cols.items() if c not in ("seen_on", "date_of_birth")},
            "date_of_birth": pa.array(cols["date_of_birth"], pa.date32()),
            "seen_on": pa.array(cols["seen_on"], pa.date32()),
        })
    return LinkableSources(tables, truth, rates, tuple(sources), people, seed, errors)


LINKAGE_COLUMNS = {"record_id": "record_id", "first_name": "first_name", "surname": "surname",
                   "date_of_birth": "date_of_birth", "sex": "sex", "postcode": "postcode"}


def schema_spec(name: str) -> dict[str, Any]:
    """The extract schema of a generated source: identifiers dropped or tokenised, the person index
    reading its identifier columns, invalid or missing numbers rejected unless the index links them."""
    drop = {"kind": "drop"}
    return {
        "name": name,
        "nhs_number_column": "nhs_number",
        "invalid_nhs_policy": "reject",
        "linkage_columns": dict(LINKAGE_COLUMNS),
        "columns": [
            {"name": "record_id", "role": "direct_identifier", "transform": drop},
            {"name": "nhs_number", "role": "direct_identifier", "transform": {"kind": "nhs_token"},
             "output_name": "patient_token"},
            {"name": "first_name", "role": "direct_identifier", "transform": drop},
            {"name": "surname", "role": "direct_identifier", "transform": drop},
            {"name": "date_of_birth", "role": "quasi_identifier", "transform": {"kind": "dob_year"},
             "output_name": "year_of_birth"},
            {"name": "sex", "role": "quasi_identifier"},
            {"name": "postcode", "role": "quasi_identifier", "transform": {"kind": "postcode_district"}},
            {"name": "seen_on", "role": "attribute"},
        ],
    }


def write(sources: LinkableSources, out_dir: Path) -> dict[str, Path]:
    """One Parquet file per source in ``out_dir``; returns the paths by source name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in sources.tables.items():
        paths[name] = out_dir / f"{name}.parquet"
        pq.write_table(table, paths[name])
    return paths


def records(sources: LinkableSources) -> list[Record]:
    """The generated records as the linkage core takes them."""
    out = []
    for name, table in sources.tables.items():
        columns = {c: table.column(c).to_pylist() for c in ("record_id", "nhs_number", "first_name", "surname",
                                                             "date_of_birth", "sex", "postcode")}
        out.extend(
            Record(name, rid, nhs, first, surname, dob, sex, postcode)
            for rid, nhs, first, surname, dob, sex, postcode in zip(*columns.values(), strict=True)
        )
    return out
