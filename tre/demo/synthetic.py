"""A seeded, deterministic generator of one NHS region's synthetic patient-level data.

Why it exists: the demo needs data that looks and behaves like a region's (valid NHS numbers,
identifiers leaking into free text, diabetes clustering in deprived areas) without touching a real
patient, and the benchmarks need the same data at ten million patients.

How it stays fast and bounded: every column is drawn with vectorised numpy for a whole *block* of
``BLOCK_SIZE`` patients at a time, never row by row, and each table is streamed to its Parquet
file one chunk (a whole number of blocks) at a time, so memory grows with ``chunk_size``, not
with ``patients``.

How it stays deterministic: block ``b`` draws from its own PCG64 stream,
``SeedSequence(seed, spawn_key=(1, b))``, so the rows depend only on ``seed`` and ``patients``;
``chunk_size`` changes the Parquet row groups but never a value. The same ``seed``, ``patients``
and ``chunk_size`` give byte-identical files (with the same pyarrow version, which is written
into each file's footer).

Everything is synthetic. The SNOMED CT, ICD-10 and BNF codes are real-looking picks for a demo, not
a clinical reference; postcodes use real outward codes with random inward codes; trust, practice
and hospital numbers are made up; phone numbers in notes are in Ofcom's range kept for drama.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pseudonymisation import nhs_number

BLOCK_SIZE = 5_000
"""Patients per random stream: the unit of determinism, so chunk_size cannot change any value."""

DEFAULT_SEED = 20261123
DEFAULT_PATIENTS = 100_000
DEFAULT_CHUNK_SIZE = 100_000

REFERENCE_DATE = "2026-03-31"
"""The 'today' of the data (end of a financial year), fixed so output never depends on the clock."""
WINDOW_START = "2016-04-01"
"""First day of the ten-year observation window for encounters, prescriptions and admissions."""
DIAGNOSIS_LOOKBACK_YEARS = 20
"""Diagnoses may predate the window (GP records carry history) by up to this many years."""

INVALID_NHS_SHARE = 0.005
"""Share of patients (exact per block, rounded) whose NHS number is unusable: the first half of
them missing (null), the rest ten digits with a wrong check digit, for the invalid-number policy."""

NOTE_SHARE = 0.30
"""Share of GP events carrying a free-text note."""
IDENTIFIER_NOTE_SHARE = 0.04
"""Share of notes that leak one of the patient's identifiers, so a scrubber has something to find."""

NHS_PREFIX_BASE = 400_000_000
NHS_PREFIX_SPAN = 100_000_000
"""Nine-digit prefixes are drawn from 400 000 000-499 999 999 (England's issued range, so a
synthetic number may coincide with a real person's; they are never linked to anything real)."""
_NHS_CANDIDATES_PER_BLOCK = 6_000
"""Disjoint prefix slice per block; ~1/11 have no valid check digit, 6,000 leaves 5,000 with room."""
MAX_PATIENTS = (NHS_PREFIX_SPAN // _NHS_CANDIDATES_PER_BLOCK) * BLOCK_SIZE

TABLES = ("patients", "gp_events", "admissions", "prescriptions")

_EPOCH = np.datetime64("1970-01-01", "D")
_REF = int((np.datetime64(REFERENCE_DATE, "D") - _EPOCH).astype(np.int64))
_WINDOW = int((np.datetime64(WINDOW_START, "D") - _EPOCH).astype(np.int64))
_DAYS_PER_YEAR = 365.25

# ---------------------------------------------------------------------------------------------
# Reference tables. Module constants, so every block shares them and the catalogue can cite them.
# ---------------------------------------------------------------------------------------------

# England and Wales, Census 2021, share of population by five-year age band (%), last band 90+.
_AGE_BAND_SHARE = np.array(
    [5.4, 5.9, 6.0, 5.6, 6.0, 6.6, 6.9, 6.6, 6.2, 6.5, 6.9, 6.7, 5.8, 5.0, 5.0, 3.6, 2.4, 1.5, 0.9]
)
_AGE_BAND_SHARE = _AGE_BAND_SHARE / _AGE_BAND_SHARE.sum()

_ETHNICITIES = ("White", "Asian or Asian British", "Black or Black British", "Mixed or Multiple",
                "Other ethnic group", "Not stated")


@dataclass(frozen=True)
class _District:
    """A postcode district group of the region: its outward codes, deprivation and ethnic mix."""

    name: str
    outward: tuple[str, ...]
    share: float
    mean_decile: float  # IMD convention: 1 is the most deprived tenth of England
    ethnicity: tuple[float, ...]  # same order as _ETHNICITIES
    trust: int  # index into _TRUSTS: the patients' local acute trust


# Real West Yorkshire outward codes; mixes are rough 2021-census-like shapes, not exact figures.
_DISTRICTS = (
    _District("Leeds", ("LS6", "LS7", "LS8", "LS9", "LS11", "LS12", "LS15", "LS17"), 0.34, 5.2,
              (0.78, 0.09, 0.06, 0.03, 0.02, 0.02), 0),
    _District("Bradford", ("BD3", "BD5", "BD7", "BD8", "BD9", "BD18"), 0.23, 3.6,
              (0.58, 0.33, 0.02, 0.03, 0.02, 0.02), 1),
    _District("Wakefield", ("WF1", "WF2", "WF6", "WF10"), 0.15, 4.8,
              (0.92, 0.03, 0.01, 0.01, 0.01, 0.02), 2),
    _District("Kirklees", ("HD1", "HD2", "HD3", "WF13", "WF17"), 0.18, 5.0,
              (0.76, 0.17, 0.02, 0.02, 0.01, 0.02), 3),
    _District("Calderdale", ("HX1", "HX3", "HX6", "HX7"), 0.10, 5.6,
              (0.86, 0.09, 0.01, 0.02, 0.01, 0.01), 3),
)
_PRACTICES_PER_DISTRICT = 8

_TRUSTS = ("RZA", "RZB", "RZC", "RZD")  # made-up trust codes in the three-character ODS shape
_TRUST_MRN_LETTER = ("L", "B", "W", "K")
_MRN_MULTIPLIER = np.array([7_654_321, 3_141_593, 2_718_283, 1_618_033])  # coprime with 10**8
_MRN_OFFSET = np.array([12_345_678, 23_456_789, 34_567_891, 45_678_912])
_TRUST_OTHER_SHARE = 0.15  # admissions away from the district's own trust

_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # the inward unit never uses C I K M O V

_GIVEN_FEMALE = (
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Sophia", "Grace", "Lily", "Freya", "Emily", "Ella",
    "Poppy", "Aisha", "Fatima", "Maryam", "Zara", "Hannah", "Sarah", "Emma", "Laura", "Rachel",
    "Claire", "Helen", "Susan", "Margaret", "Patricia", "Jean", "Joan", "Dorothy", "Irene", "Priya",
    "Amara", "Chloe", "Jessica", "Sophie", "Karen", "Julie", "Nicola", "Gemma", "Megan",
)
_GIVEN_MALE = (
    "Oliver", "George", "Noah", "Arthur", "Muhammad", "Leo", "Harry", "Oscar", "Jack", "Thomas",
    "James", "William", "Daniel", "Samuel", "Joseph", "Adam", "Ali", "Hamza", "Yusuf", "Ibrahim",
    "David", "John", "Michael", "Paul", "Peter", "Robert", "Andrew", "Mark", "Stephen", "Richard",
    "Kenneth", "Brian", "Ronald", "Arjun", "Kwame", "Tomasz", "Liam", "Connor", "Ryan", "Matthew",
)
_FAMILY = (
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson",
    "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson",
    "Clarke", "Khan", "Hussain", "Ahmed", "Ali", "Akhtar", "Shah", "Patel", "Begum", "Mahmood",
    "Iqbal", "Hughes", "Edwards", "Lee", "Turner", "Hill", "Moore", "Cooper", "Ward", "Morris",
    "King", "Harrison", "Baker", "Lewis", "Martin", "Allen", "Scott", "Young", "Mitchell", "Kowalski",
    "Nowak", "Okafor", "Mensah", "Singh", "Kaur", "Sutcliffe", "Greenwood", "Barraclough", "Brook",
    "Haigh", "Ackroyd",
)

# Ages at which prevalence curves are given; every curve below has one value per knot.
_AGE_KNOTS = np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 105], dtype=float)


@dataclass(frozen=True)
class _Condition:
    """A long-term condition: how common, for whom, how it is coded, admitted and treated."""

    key: str
    snomed: str
    term: str
    prevalence: tuple[float, ...]  # by _AGE_KNOTS
    icd10: str
    emergency: float  # probability an admission for it is an emergency
    female: float = 1.0  # relative risk for women (men get the same number for men below)
    male: float = 1.0
    deprived: tuple[float, float] = (1.0, 1.0)  # relative risk at decile 1 and at decile 10
    smoker: tuple[float, float, float] = (1.0, 1.0, 1.0)  # never, ex, current
    ethnic: tuple[float, ...] = (1.0,) * 6


_CONDITIONS = (
    _Condition("t2dm", "44054006", "Diabetes mellitus type 2",
               (0, 0, .003, .01, .025, .055, .095, .14, .155, .14, .12), "E11.9", 0.7, male=1.2,
               female=0.85, deprived=(1.6, 0.65), ethnic=(1.0, 2.2, 1.8, 1.2, 1.3, 1.0)),
    _Condition("hypertension", "38341003", "Hypertensive disorder, systemic arterial",
               (0, 0, .008, .025, .065, .14, .25, .38, .47, .5, .5), "I10", 0.6,
               deprived=(1.2, 0.85), ethnic=(1.0, 1.1, 1.4, 1.0, 1.0, 1.0)),
    _Condition("asthma", "195967001", "Asthma",
               (0, .09, .08, .07, .065, .065, .065, .065, .06, .055, .05), "J45.9", 0.9,
               deprived=(1.2, 0.9)),
    _Condition("copd", "13645005", "Chronic obstructive lung disease",
               (0, 0, 0, .002, .006, .015, .035, .06, .08, .08, .07), "J44.1", 0.95,
               deprived=(1.8, 0.6), smoker=(0.35, 2.0, 3.0)),
    _Condition("depression", "35489007", "Depressive disorder",
               (0, .004, .08, .12, .13, .13, .12, .10, .10, .10, .10), "F32.9", 0.8, female=1.35,
               male=0.7, deprived=(1.4, 0.75)),
    _Condition("anxiety", "197480006", "Anxiety disorder",
               (0, .01, .08, .09, .08, .07, .06, .05, .05, .05, .05), "F41.9", 0.8, female=1.3,
               male=0.7),
    _Condition("af", "49436004", "Atrial fibrillation",
               (0, 0, 0, .001, .003, .008, .025, .06, .11, .14, .14), "I48.9", 0.8, male=1.3,
               female=0.8),
    _Condition("chd", "53741008", "Coronary arteriosclerosis",
               (0, 0, 0, .002, .01, .03, .07, .12, .17, .19, .19), "I21.9", 0.95, male=1.6,
               female=0.6, deprived=(1.3, 0.8), smoker=(0.8, 1.2, 1.6)),
    _Condition("heart_failure", "84114007", "Heart failure",
               (0, 0, 0, 0, .002, .005, .012, .03, .06, .09, .1), "I50.9", 0.9),
    _Condition("ckd", "709044004", "Chronic kidney disease",
               (0, 0, 0, .002, .005, .015, .04, .10, .20, .30, .33), "N18.4", 0.5),
    _Condition("hypothyroidism", "40930008", "Hypothyroidism",
               (0, .001, .01, .02, .03, .04, .05, .06, .07, .07, .07), "E03.9", 0.3, female=1.6,
               male=0.3),
    _Condition("osteoarthritis", "396275006", "Osteoarthritis",
               (0, 0, .002, .01, .03, .08, .15, .25, .32, .35, .35), "M17.1", 0.05, female=1.2),
    _Condition("dementia", "52448006", "Dementia",
               (0, 0, 0, 0, 0, .002, .005, .02, .07, .18, .30), "F03", 0.8),
    _Condition("stroke", "230690007", "Cerebrovascular accident",
               (0, 0, 0, .001, .003, .008, .02, .04, .07, .09, .09), "I63.9", 0.98,
               smoker=(0.8, 1.2, 1.6)),
)
_COND = {c.key: i for i, c in enumerate(_CONDITIONS)}
_N_COND = len(_CONDITIONS)

# GP codes that are not diagnoses of a long-term condition. value: what the measurement draws.
_OBSERVATIONS = (
    ("hba1c", "999791000000106", "Haemoglobin A1c level - IFCC standardised"),
    ("sbp", "271649006", "Systolic blood pressure"),
    ("egfr", "80274001", "Glomerular filtration rate"),
    ("cholesterol", "77068002", "Cholesterol measurement"),
    ("bmi", "60621009", "Body mass index"),
    ("flu_vaccine", "86198006", "Administration of influenza vaccine"),
    ("med_review", "182836005", "Review of medication"),
    ("referral", "3457005", "Patient referral"),
    ("urti", "54150009", "Upper respiratory infection"),
    ("uti", "68566005", "Urinary tract infectious disease"),
    ("back_pain", "279039007", "Low back pain"),
    ("headache", "25064002", "Headache"),
    ("sinusitis", "36971009", "Sinusitis"),
    ("otitis_media", "65363002", "Otitis media"),
    ("influenza", "6142004", "Influenza"),
    ("covid", "840539006", "Disease caused by severe acute respiratory syndrome coronavirus 2"),
    ("never_smoked", "266919005", "Never smoked tobacco"),
    ("ex_smoker", "8517006", "Ex-smoker"),
    ("smoker", "77176002", "Smoker"),
)
_GP_CODES = tuple((c.snomed, c.term) for c in _CONDITIONS) + tuple((s, t) for _, s, t in _OBSERVATIONS)
_OBS = {key: _N_COND + i for i, (key, _, _) in enumerate(_OBSERVATIONS)}

# Monitoring that follows a diagnosis: (condition, GP code, mean count over the window).
_MONITORING = (
    ("t2dm", "hba1c", 3.5), ("t2dm", "sbp", 1.5), ("t2dm", "bmi", 1.0), ("t2dm", "med_review", 1.5),
    ("hypertension", "sbp", 2.5), ("hypertension", "med_review", 1.0),
    ("asthma", "med_review", 1.0), ("copd", "med_review", 1.5), ("copd", "flu_vaccine", 2.0),
    ("depression", "med_review", 1.0), ("af", "med_review", 1.5), ("chd", "cholesterol", 2.0),
    ("chd", "med_review", 1.0), ("heart_failure", "med_review", 1.5), ("ckd", "egfr", 2.0),
    ("hypothyroidism", "med_review", 1.0), ("dementia", "med_review", 1.0),
    ("stroke", "cholesterol", 1.0),
)
_MON_COND = np.array([_COND[c] for c, _, _ in _MONITORING])
_MON_CODE = np.array([_OBS[o] for _, o, _ in _MONITORING])
_MON_MEAN = np.array([m for _, _, m in _MONITORING])

# Everyday GP codes, weighted for six groups: (child, adult, 65+) x (male, female).
_EVERYDAY = ("urti", "uti", "back_pain", "headache", "sinusitis", "otitis_media", "influenza", "covid",
             "flu_vaccine", "bmi", "sbp", "cholesterol", "hba1c", "med_review", "referral")
_EVERYDAY_WEIGHTS = np.array([
    # urti uti back head sinus otitis flu covid fluvax bmi sbp chol hba1c medrev refer
    [30, 1, 0, 4, 2, 20, 3, 6, 3, 2, 0, 0, 0, 1, 5],  # child, male
    [30, 3, 0, 4, 2, 18, 3, 6, 3, 2, 0, 0, 0, 1, 5],  # child, female
    [14, 2, 9, 6, 5, 1, 3, 6, 3, 9, 10, 4, 4, 5, 9],  # adult, male
    [14, 9, 9, 7, 6, 1, 3, 6, 4, 9, 9, 4, 4, 5, 10],  # adult, female
    [8, 4, 6, 2, 3, 0, 3, 6, 16, 8, 14, 7, 7, 9, 9],  # 65+, male
    [8, 9, 6, 2, 3, 0, 3, 6, 16, 8, 13, 7, 7, 9, 9],  # 65+, female
], dtype=float)
_EVERYDAY_CODE = np.array([_OBS[k] for k in _EVERYDAY])
# Everyday encounters per patient over the window, by age.
_EVERYDAY_RATE_AGES = np.array([0, 5, 16, 40, 65, 80, 105], dtype=float)
_EVERYDAY_RATE = np.array([2.3, 1.2, 1.0, 1.35, 2.0, 2.5, 2.7])

_PLAIN_NOTES = (
    "Reviewed, plan discussed and agreed.", "Advised to return if symptoms worsen.",
    "Bloods requested.", "Telephone consultation.", "Seen with carer.",
    "Medication reviewed, no changes.", "Safety-netting advice given.",
    "Reports improvement since last visit.", "Follow up in 4 weeks.", "Leaflet given.",
    "Did not attend previous appointment.", "Referred for further assessment.",
)

# Hospital admissions not tied to a long-term condition: (ICD-10, emergency probability).
_ADMIT_OTHER = (
    ("J18.9", 0.95), ("N39.0", 0.9), ("R07.4", 0.95), ("K35.8", 0.98), ("S72.0", 0.99),
    ("O80", 0.5), ("K80.2", 0.3), ("H25.9", 0.01), ("K57.3", 0.6), ("C50.9", 0.1), ("R10.4", 0.95),
    ("J06.9", 0.95), ("A09", 0.95), ("S06.0", 0.98), ("M54.5", 0.5),
)
_ADMIT_OTHER_WEIGHTS = np.array([
    # pneu uti chest appx hip birth gall catar diver breast abdo urti gastro head back
    [6, 2, 0, 8, 0, 0, 0, 0, 0, 0, 10, 25, 25, 10, 0],  # child, male
    [6, 4, 0, 8, 0, 0, 0, 0, 0, 0, 10, 25, 25, 8, 0],  # child, female
    [6, 2, 20, 6, 1, 0, 6, 1, 5, 0, 15, 2, 4, 6, 6],  # adult, male
    [5, 6, 12, 5, 1, 40, 12, 1, 5, 6, 18, 2, 4, 3, 6],  # adult, female
    [20, 10, 18, 1, 12, 0, 5, 14, 8, 0, 8, 1, 3, 3, 4],  # 65+, male
    [18, 14, 14, 1, 20, 0, 5, 16, 8, 5, 8, 1, 3, 3, 4],  # 65+, female
], dtype=float)
_ADMIT_CODES = tuple(c.icd10 for c in _CONDITIONS) + tuple(code for code, _ in _ADMIT_OTHER)
_ADMIT_EMERGENCY = np.array([c.emergency for c in _CONDITIONS] + [e for _, e in _ADMIT_OTHER])
_ADMIT_LINKED_SHARE = 0.45  # of admissions of people with a condition, share for that condition
_ADMIT_RATE_AGES = np.array([0, 1, 5, 16, 40, 65, 80, 105], dtype=float)
_ADMIT_RATE = np.array([0.3, 0.12, 0.07, 0.09, 0.14, 0.29, 0.52, 0.63])


@dataclass(frozen=True)
class _Drug:
    """A medicine as prescribed: BNF chemical-substance code (9 characters), presentation, pack."""

    name: str
    bnf: str
    quantity: int
    unit_cost: float  # GBP per unit, tariff-like


_DRUGS = (
    _Drug("Metformin 500mg tablets", "0601022B0", 56, 0.02),
    _Drug("Gliclazide 80mg tablets", "0601021M0", 56, 0.03),
    _Drug("Amlodipine 5mg tablets", "0206020A0", 28, 0.03),
    _Drug("Ramipril 5mg capsules", "0205051R0", 28, 0.04),
    _Drug("Salbutamol 100micrograms/dose inhaler", "0301011R0", 1, 1.50),
    _Drug("Beclometasone 100micrograms/dose inhaler", "0302000C0", 1, 7.42),
    _Drug("Tiotropium 18microgram inhalation powder capsules", "0301020Q0", 30, 1.10),
    _Drug("Sertraline 50mg tablets", "0403030Q0", 28, 0.05),
    _Drug("Citalopram 20mg tablets", "0403030D0", 28, 0.04),
    _Drug("Fluoxetine 20mg capsules", "0403030E0", 30, 0.05),
    _Drug("Propranolol 10mg tablets", "0204000R0", 28, 0.03),
    _Drug("Apixaban 5mg tablets", "0208020Z0", 56, 0.95),
    _Drug("Bisoprolol 2.5mg tablets", "0204000H0", 28, 0.03),
    _Drug("Atorvastatin 20mg tablets", "0212000B0", 28, 0.04),
    _Drug("Aspirin 75mg dispersible tablets", "0209000A0", 28, 0.03),
    _Drug("Furosemide 40mg tablets", "0202020L0", 28, 0.03),
    _Drug("Levothyroxine 50microgram tablets", "0602010V0", 28, 0.05),
    _Drug("Paracetamol 500mg tablets", "0407010H0", 100, 0.01),
    _Drug("Naproxen 500mg tablets", "1001010P0", 56, 0.05),
    _Drug("Omeprazole 20mg gastro-resistant capsules", "0103050P0", 28, 0.04),
    _Drug("Donepezil 10mg tablets", "0411000D0", 28, 0.04),
    _Drug("Clopidogrel 75mg tablets", "0209000C0", 28, 0.04),
    _Drug("Amoxicillin 500mg capsules", "0501013B0", 21, 0.06),
    _Drug("Nitrofurantoin 100mg modified-release capsules", "0501130R0", 6, 0.80),
)
_DRUG = {d.name.split()[0].lower(): i for i, d in enumerate(_DRUGS)}

# Repeat prescribing after a diagnosis: (condition, drug, share treated with it, mean issues).
_REPEATS = (
    ("t2dm", "metformin", 0.85, 4.5), ("t2dm", "gliclazide", 0.25, 3.0),
    ("t2dm", "atorvastatin", 0.6, 3.0), ("hypertension", "amlodipine", 0.5, 3.5),
    ("hypertension", "ramipril", 0.45, 3.5), ("asthma", "salbutamol", 0.9, 2.0),
    ("asthma", "beclometasone", 0.5, 2.0), ("copd", "tiotropium", 0.7, 3.0),
    ("copd", "salbutamol", 0.8, 2.0), ("depression", "sertraline", 0.45, 2.0),
    ("depression", "citalopram", 0.3, 2.0), ("depression", "fluoxetine", 0.15, 2.0),
    ("anxiety", "propranolol", 0.3, 1.5), ("anxiety", "sertraline", 0.2, 1.5),
    ("af", "apixaban", 0.8, 4.5), ("af", "bisoprolol", 0.6, 3.5),
    ("chd", "atorvastatin", 0.8, 3.5), ("chd", "aspirin", 0.6, 3.5), ("chd", "bisoprolol", 0.4, 3.0),
    ("heart_failure", "furosemide", 0.8, 3.5), ("heart_failure", "bisoprolol", 0.6, 3.0),
    ("ckd", "ramipril", 0.3, 2.0), ("hypothyroidism", "levothyroxine", 0.95, 4.5),
    ("osteoarthritis", "paracetamol", 0.5, 2.0), ("osteoarthritis", "naproxen", 0.25, 1.5),
    ("osteoarthritis", "omeprazole", 0.2, 1.5), ("dementia", "donepezil", 0.6, 3.0),
    ("stroke", "clopidogrel", 0.8, 3.5), ("stroke", "atorvastatin", 0.8, 3.5),
)
_REP_COND = np.array([_COND[c] for c, _, _, _ in _REPEATS])
_REP_DRUG = np.array([_DRUG[d] for _, d, _, _ in _REPEATS])
_REP_SHARE = np.array([s for _, _, s, _ in _REPEATS])
_REP_MEAN = np.array([m for _, _, _, m in _REPEATS])

# Acute prescriptions on the day of an everyday GP encounter: (GP code, drug, probability).
_ACUTE = (("urti", "amoxicillin", 0.25), ("sinusitis", "amoxicillin", 0.4),
          ("otitis_media", "amoxicillin", 0.45), ("uti", "nitrofurantoin", 0.75),
          ("back_pain", "naproxen", 0.3), ("headache", "paracetamol", 0.2))
_ACUTE_DRUG = np.full(len(_GP_CODES), -1)
_ACUTE_P = np.zeros(len(_GP_CODES))
for _code, _drug, _p in _ACUTE:
    _ACUTE_DRUG[_OBS[_code]] = _DRUG[_drug]
    _ACUTE_P[_OBS[_code]] = _p

# ---------------------------------------------------------------------------------------------
# Schemas and the catalogue description written to datasets.json.
# ---------------------------------------------------------------------------------------------

SCHEMAS = {
    "patients": pa.schema([
        ("nhs_number", pa.string()), ("given_name", pa.string()), ("family_name", pa.string()),
        ("date_of_birth", pa.date32()), ("sex", pa.string()), ("ethnicity", pa.string()),
        ("postcode", pa.string()), ("deprivation_decile", pa.int8()),
        ("registered_practice", pa.string()),
    ]),
    "gp_events": pa.schema([
        ("nhs_number", pa.string()), ("event_date", pa.date32()), ("code", pa.string()),
        ("description", pa.string()), ("value", pa.float64()), ("free_text", pa.string()),
    ]),
    "admissions": pa.schema([
        ("nhs_number", pa.string()), ("hospital_number", pa.string()),
        ("admission_date", pa.date32()), ("discharge_date", pa.date32()),
        ("primary_diagnosis", pa.string()), ("method", pa.string()), ("provider", pa.string()),
    ]),
    "prescriptions": pa.schema([
        ("nhs_number", pa.string()), ("issue_date", pa.date32()), ("bnf_code", pa.string()),
        ("drug_name", pa.string()), ("quantity", pa.int32()), ("cost_gbp", pa.float64()),
    ]),
}

_NHS_COLUMN = ("direct_identifier", "high",
               "NHS number, ten digits; ~0.5% of patients missing or failing the modulus-11 check")
_CATALOGUE = {
    "patients": ("One row per registered patient of the region.", {
        "nhs_number": _NHS_COLUMN,
        "given_name": ("direct_identifier", "high", "Given name"),
        "family_name": ("direct_identifier", "high", "Family name"),
        "date_of_birth": ("quasi_identifier", "high", "Date of birth"),
        "sex": ("quasi_identifier", "medium", "Sex: F or M"),
        "ethnicity": ("quasi_identifier", "medium", "Ethnic group, ONS 2021 broad groups or Not stated"),
        "postcode": ("quasi_identifier", "high", "Home postcode, full unit"),
        "deprivation_decile": ("quasi_identifier", "low",
                               "Index of Multiple Deprivation decile of the home area, 1 = most deprived"),
        "registered_practice": ("quasi_identifier", "low", "Registered GP practice code"),
    }),
    "gp_events": ("Coded GP record entries: diagnoses, observations, procedures.", {
        "nhs_number": _NHS_COLUMN,
        "event_date": ("quasi_identifier", "medium", "Date the entry was recorded"),
        "code": ("attribute", "medium", "SNOMED CT concept id"),
        "description": ("attribute", "medium", "SNOMED CT term for the code"),
        "value": ("attribute", "medium", "Result for measurements (HbA1c mmol/mol, systolic BP mmHg, "
                  "eGFR mL/min/1.73m2, cholesterol mmol/L, BMI kg/m2), else null"),
        "free_text": ("free_text", "high",
                      "Clinician's note; may contain names, NHS numbers, dates of birth, postcodes, phones"),
    }),
    "admissions": ("Hospital inpatient and day-case spells.", {
        "nhs_number": _NHS_COLUMN,
        "hospital_number": ("direct_identifier", "high", "Local hospital number (MRN) at the provider"),
        "admission_date": ("quasi_identifier", "medium", "Date of admission"),
        "discharge_date": ("quasi_identifier", "medium",
                           "Date of discharge, on or after admission; open spells cut at the reference date"),
        "primary_diagnosis": ("attribute", "medium", "Primary diagnosis, ICD-10"),
        "method": ("attribute", "low", "Admission method: elective or emergency"),
        "provider": ("attribute", "low", "Provider trust code"),
    }),
    "prescriptions": ("Primary care prescriptions issued.", {
        "nhs_number": _NHS_COLUMN,
        "issue_date": ("quasi_identifier", "medium", "Date issued"),
        "bnf_code": ("attribute", "medium", "BNF chemical substance code (9 characters)"),
        "drug_name": ("attribute", "medium", "Drug, strength and form"),
        "quantity": ("attribute", "low", "Quantity issued, in units of the form"),
        "cost_gbp": ("attribute", "low", "Net ingredient cost, pounds"),
    }),
}


# Regexes the data-quality report checks codes against (a miss counts as an invalid code).
_VALID_PATTERNS = {
    "code": r"\d{6,18}",
    "primary_diagnosis": r"[A-Z]\d{2}(\.\d{1,2})?",
    "bnf_code": r"\d{7}[0-9A-Z]{2}",
}


# How the catalogue generalises each quasi-identifier in an extract (see docs/pseudonymisation/).
_GENERALISE: dict[str, dict] = {
    "date_of_birth": {"kind": "dob_age_band", "params": {"reference_date": REFERENCE_DATE, "width": 5, "top": 90}},
    "postcode": {"kind": "postcode_district", "params": {}},
    "event_date": {"kind": "date_shift", "params": {"max_days": 180}},
    "admission_date": {"kind": "date_shift", "params": {"max_days": 180}},
    "discharge_date": {"kind": "date_shift", "params": {"max_days": 180}},
    "issue_date": {"kind": "date_shift", "params": {"max_days": 180}},
}


def _column_entry(field: pa.Field, role: str, sensitivity: str, description: str) -> dict:
    """One column as pseudonymisation.schema.ColumnSpec reads it, plus type, sensitivity and prose."""
    entry: dict = {"name": field.name, "role": role}
    if field.name == "nhs_number":  # the one identifier an extract may keep, as a per-project token
        entry["transform"] = {"kind": "nhs_token", "params": {}}
    elif field.name in _GENERALISE:  # quasi-identifiers are generalised by default, never kept exact
        entry["transform"] = _GENERALISE[field.name]
    if field.name in _VALID_PATTERNS:
        entry["valid_pattern"] = _VALID_PATTERNS[field.name]
    entry.update(type=str(field.type), sensitivity=sensitivity, description=description)
    return entry


def catalogue(rows: dict[str, int] | None = None, seed: int | None = None) -> dict:
    """The datasets.json content: what the control plane needs to register each table.

    Each entry of ``tables`` loads with ``pseudonymisation.schema.DatasetSchema.from_dict`` as is;
    the extra keys (file, rows, type, sensitivity, description) are for the catalogue's pages.
    """
    tables = []
    for name in TABLES:
        description, columns = _CATALOGUE[name]
        schema = SCHEMAS[name]
        tables.append({
            "name": name,
            "file": f"{name}.parquet",
            "format": "parquet",
            "description": description,
            "sensitivity": "special_category",
            "rows": None if rows is None else rows[name],
            "nhs_number_column": "nhs_number",
            "invalid_nhs_policy": "reject",
            "columns": [_column_entry(field, *columns[field.name]) for field in schema],
        })
    return {
        "generator": "tre.demo.synthetic",
        "synthetic": True,
        "seed": seed,
        "reference_date": REFERENCE_DATE,
        "window_start": WINDOW_START,
        "invalid_nhs_share": INVALID_NHS_SHARE,
        "tables": tables,
    }


# ---------------------------------------------------------------------------------------------
# Vectorised helpers.
# ---------------------------------------------------------------------------------------------


def check_digits(prefixes: np.ndarray) -> np.ndarray:
    """Modulus-11 check digits of nine-digit prefixes, all at once; 10 marks an impossible prefix."""
    rest = prefixes.astype(np.int64)
    total = np.zeros_like(rest)
    for weight in range(2, 11):  # the last of the nine digits weighs 2, the first 10
        total += (rest % 10) * weight
        rest = rest // 10
    digit = 11 - total % 11
    digit[digit == 11] = 0
    return digit


def _nhs_permutation(seed: int) -> tuple[int, int]:
    """An affine bijection of the prefix space, from the seed, so numbers scatter yet never repeat."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(0,))))
    multiplier = int(rng.integers(NHS_PREFIX_SPAN // 10, NHS_PREFIX_SPAN)) | 1
    if multiplier % 5 == 0:  # coprime with 10**8: odd and not a multiple of five
        multiplier += 2
    return multiplier, int(rng.integers(0, NHS_PREFIX_SPAN))


def _nhs_numbers(block: int, n: int, permutation: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """n valid NHS numbers, unique across all blocks because each block owns a disjoint slice."""
    multiplier, offset = permutation
    j = np.arange(block * _NHS_CANDIDATES_PER_BLOCK, (block + 1) * _NHS_CANDIDATES_PER_BLOCK, dtype=np.int64)
    prefixes = NHS_PREFIX_BASE + (multiplier * j + offset) % NHS_PREFIX_SPAN
    digits = check_digits(prefixes)
    ok = digits != 10
    if ok.sum() < n:  # pragma: no cover - ~1/11 are impossible; 6,000 candidates always suffice
        raise RuntimeError("not enough valid NHS number prefixes in this block's slice")
    numbers = prefixes[ok][:n] * 10 + digits[ok][:n]
    first = str(int(numbers[0]))  # guard: the vectorised rule must agree with the reference one
    if nhs_number.check_digit(first[:9]) != int(first[9]):  # pragma: no cover
        raise RuntimeError("vectorised NHS check digit disagrees with pseudonymisation.nhs_number")
    return rng.permutation(numbers)


def _uniform_days(rng: np.random.Generator, low: np.ndarray, high: int | np.ndarray) -> np.ndarray:
    """A day drawn uniformly from [low, high] inclusive, per row."""
    span = np.asarray(high) - low + 1
    return (low + np.floor(rng.random(low.shape[0]) * span)).astype(np.int64)


def _pick_by_group(rng: np.random.Generator, group: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per row, an index drawn from the weight row of its group (inverse CDF, no Python loop)."""
    cdf = np.cumsum(weights, axis=1)
    cdf = cdf / cdf[:, -1:]
    picked = (rng.random(group.shape[0])[:, None] > cdf[group]).sum(axis=1)
    return np.minimum(picked, weights.shape[1] - 1)


def _pick_true(rng: np.random.Generator, flags: np.ndarray) -> np.ndarray:
    """Per row, the column of one of its True flags chosen uniformly (each row must have one)."""
    k = np.floor(rng.random(flags.shape[0]) * flags.sum(axis=1))
    return (np.cumsum(flags, axis=1) > k[:, None]).argmax(axis=1)


def _expand(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows for an (n, k) count matrix: the row index and column index of each repeated cell."""
    flat = np.repeat(np.arange(counts.size), counts.ravel())
    return flat // counts.shape[1], flat % counts.shape[1]


def _strings(values: tuple[str, ...] | list[str]) -> pa.Array:
    return pa.array(values, type=pa.string())


def _dates(days: np.ndarray) -> pa.Array:
    return pa.array(days.astype("datetime64[D]"), type=pa.date32())


def _padded(numbers: np.ndarray, width: int) -> pa.Array:
    """Integers as zero-padded decimal strings, in Arrow rather than Python."""
    return pc.utf8_lpad(pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), width, "0")


def _join(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation of string arrays and literals."""
    return pc.binary_join_element_wise(*(pa.scalar(p) if isinstance(p, str) else p for p in parts), "")


_GIVEN = _strings(_GIVEN_FEMALE + _GIVEN_MALE)
_FAMILY_ARR = _strings(_FAMILY)
_SEX = _strings(("M", "F"))
_ETHNICITY_ARR = _strings(_ETHNICITIES)
_OUTWARDS = [code for d in _DISTRICTS for code in d.outward]
_OUTWARD_ARR = _strings(_OUTWARDS)
_OUTWARD_START = np.cumsum([0] + [len(d.outward) for d in _DISTRICTS])[:-1]
_OUTWARD_COUNT = np.array([len(d.outward) for d in _DISTRICTS])
_INWARD_ARR = _strings([f"{digit}{a}{b}" for digit in range(10) for a in _INWARD_LETTERS
                        for b in _INWARD_LETTERS])
_PRACTICE_ARR = _strings([f"Y0{3000 + 37 * i:04d}" for i in range(len(_DISTRICTS) * _PRACTICES_PER_DISTRICT)])
_DISTRICT_SHARE = np.array([d.share for d in _DISTRICTS]) / sum(d.share for d in _DISTRICTS)
_DISTRICT_DECILE = np.array([d.mean_decile for d in _DISTRICTS])
_DISTRICT_ETHNICITY = np.array([d.ethnicity for d in _DISTRICTS])
_DISTRICT_TRUST = np.array([d.trust for d in _DISTRICTS])
_CODE_ARR = _strings([code for code, _ in _GP_CODES])
_TERM_ARR = _strings([term for _, term in _GP_CODES])
_NOTES_ARR = _strings(_PLAIN_NOTES)
_ICD_ARR = _strings(_ADMIT_CODES)
_METHOD_ARR = _strings(("elective", "emergency"))
_TRUST_ARR = _strings(_TRUSTS)
_MRN_LETTER_ARR = _strings(_TRUST_MRN_LETTER)
_BNF_ARR = _strings([d.bnf for d in _DRUGS])
_DRUG_NAME_ARR = _strings([d.name for d in _DRUGS])
_DRUG_QUANTITY = np.array([d.quantity for d in _DRUGS])
_DRUG_UNIT_COST = np.array([d.unit_cost for d in _DRUGS])
_PREVALENCE = np.array([c.prevalence for c in _CONDITIONS])  # (conditions, knots)
_RISK_FEMALE = np.array([c.female for c in _CONDITIONS])
_RISK_MALE = np.array([c.male for c in _CONDITIONS])
_RISK_DEPRIVED = np.array([c.deprived for c in _CONDITIONS])
_RISK_SMOKER = np.array([c.smoker for c in _CONDITIONS])
_RISK_ETHNIC = np.array([c.ethnic for c in _CONDITIONS])


# ---------------------------------------------------------------------------------------------
# One block: the patients, then each child table from the same block stream.
# ---------------------------------------------------------------------------------------------


@dataclass
class _People:
    """The block's patients as numpy columns the child tables draw on, plus their Arrow strings."""

    n: int
    first_index: int
    age: np.ndarray  # years at the reference date
    dob: np.ndarray  # days since 1970-01-01
    female: np.ndarray
    ethnicity: np.ndarray
    district: np.ndarray
    decile: np.ndarray
    smoking: np.ndarray  # 0 never, 1 ex, 2 current
    conditions: np.ndarray  # (n, conditions) bool
    diagnosed: np.ndarray  # (n, conditions) day of diagnosis, meaningful where conditions is True
    nhs: pa.Array
    nhs_missing: np.ndarray
    given: pa.Array
    family: pa.Array
    postcode: pa.Array
    table: pa.Table | None = None  # the patients table itself

    @property
    def group(self) -> np.ndarray:
        """Six care groups for weight tables: (child, adult, 65+) x (male, female)."""
        return ((self.age >= 16).astype(int) + (self.age >= 65)) * 2 + self.female

    @property
    def earliest(self) -> np.ndarray:
        """First day an encounter can fall on: the window's start, or birth if later."""
        return np.maximum(self.dob, _WINDOW)


def _people(rng: np.random.Generator, block: int, n: int, permutation: tuple[int, int]) -> _People:
    """Demographics, area, deprivation, smoking and long-term conditions for one block."""
    band = rng.choice(_AGE_BAND_SHARE.size, size=n, p=_AGE_BAND_SHARE)
    age = band * 5 + rng.random(n) * 5
    old = band == _AGE_BAND_SHARE.size - 1
    age[old] = np.minimum(90 + rng.exponential(3.5, old.sum()), 105)  # a thin tail past 100
    dob = _REF - np.floor(age * _DAYS_PER_YEAR).astype(np.int64)
    female = rng.random(n) < np.interp(age, [0, 60, 80, 90, 105], [0.49, 0.505, 0.55, 0.65, 0.75])

    district = rng.choice(len(_DISTRICTS), size=n, p=_DISTRICT_SHARE)
    ethnicity = _pick_by_group(rng, district, _DISTRICT_ETHNICITY)
    decile = np.clip(np.rint(_DISTRICT_DECILE[district] + rng.normal(0, 2.2, n)), 1, 10).astype(np.int8)
    outward = _OUTWARD_START[district] + np.floor(rng.random(n) * _OUTWARD_COUNT[district]).astype(int)
    inward = rng.integers(0, len(_INWARD_ARR), n)
    practice = district * _PRACTICES_PER_DISTRICT + rng.integers(0, _PRACTICES_PER_DISTRICT, n)

    adult = age >= 16
    deprived = (10 - decile) / 9  # 1 at the most deprived decile, 0 at the least
    p_current = np.where(adult, 0.07 + 0.18 * deprived, 0)
    p_ex = np.where(adult, np.interp(age, [16, 40, 70, 105], [0.03, 0.18, 0.35, 0.35]), 0)
    u = rng.random(n)
    smoking = np.where(u < p_current, 2, np.where(u < p_current + p_ex, 1, 0))

    risk = np.stack([np.interp(age, _AGE_KNOTS, curve) for curve in _PREVALENCE], axis=1)
    risk *= np.where(female[:, None], _RISK_FEMALE, _RISK_MALE)
    risk *= _RISK_DEPRIVED[:, 1] + (_RISK_DEPRIVED[:, 0] - _RISK_DEPRIVED[:, 1]) * deprived[:, None]
    risk *= _RISK_SMOKER[:, smoking].T
    risk *= _RISK_ETHNIC[:, ethnicity].T
    conditions = rng.random((n, _N_COND)) < np.minimum(risk, 0.9)
    # Diagnosed in the second half of life so far, and not before the record's lookback.
    onset_low = np.maximum((dob + _REF) // 2, _REF - int(DIAGNOSIS_LOOKBACK_YEARS * _DAYS_PER_YEAR))[:, None]
    diagnosed = (onset_low + np.floor(rng.random((n, _N_COND)) * (_REF - onset_low + 1))).astype(np.int64)

    numbers = _nhs_numbers(block, n, permutation, rng)
    bad = rng.permutation(n)[: round(n * INVALID_NHS_SHARE)]
    missing = np.zeros(n, dtype=bool)
    missing[bad[: bad.size // 2]] = True
    wrong = bad[bad.size // 2:]
    check = numbers[wrong] % 10
    numbers[wrong] += (check + rng.integers(1, 10, wrong.size)) % 10 - check  # any other last digit
    nhs = pc.cast(pa.array(numbers, type=pa.int64(), mask=missing), pa.string())

    given = np.where(female, 0, len(_GIVEN_FEMALE)) + rng.integers(0, len(_GIVEN_FEMALE), n)
    postcode = _join(_OUTWARD_ARR.take(outward), " ", _INWARD_ARR.take(inward))
    people = _People(
        n=n, first_index=block * BLOCK_SIZE, age=age, dob=dob, female=female, ethnicity=ethnicity,
        district=district, decile=decile, smoking=smoking, conditions=conditions, diagnosed=diagnosed,
        nhs=nhs, nhs_missing=missing, given=_GIVEN.take(given),
        family=_FAMILY_ARR.take(rng.integers(0, len(_FAMILY), n)), postcode=postcode,
    )
    people_table = pa.table([
        nhs, people.given, people.family, _dates(dob), _SEX.take(female.astype(np.int64)),
        _ETHNICITY_ARR.take(ethnicity), postcode, pa.array(decile, type=pa.int8()),
        _PRACTICE_ARR.take(practice),
    ], schema=SCHEMAS["patients"])
    people.table = people_table
    return people


def _measurements(rng: np.random.Generator, people: _People, patient: np.ndarray,
                  code: np.ndarray) -> np.ndarray:
    """Values for measurement codes, shaped by the patient's conditions; NaN for everything else."""
    value = np.full(code.shape[0], np.nan)
    has = people.conditions[patient]
    age = people.age[patient]
    draws = {
        "hba1c": lambda m, h, a: np.where(h[:, _COND["t2dm"]], rng.normal(58, 12, m), rng.normal(37, 4, m))
        .clip(25, 130).round(),
        "sbp": lambda m, h, a: (np.where(h[:, _COND["hypertension"]], rng.normal(142, 14, m),
                                         rng.normal(118, 12, m)) + 0.25 * np.maximum(a - 40, 0))
        .clip(80, 220).round(),
        "egfr": lambda m, h, a: np.where(h[:, _COND["ckd"]], rng.normal(45, 10, m).clip(8, 59),
                                         (rng.normal(95, 12, m) - 0.5 * np.maximum(a - 40, 0)).clip(60, 130))
        .round(),
        "cholesterol": lambda m, h, a: np.where(h[:, _COND["chd"]] | h[:, _COND["stroke"]],
                                                rng.normal(4.2, 0.8, m), rng.normal(5.1, 1.0, m))
        .clip(2, 10).round(1),
        "bmi": lambda m, h, a: (rng.normal(np.interp(a, [0, 5, 18, 40, 70, 105], [16, 15.5, 22, 27, 28, 25]),
                                           np.where(a < 18, 2.5, 4.8)) + 4.0 * h[:, _COND["t2dm"]])
        .clip(11, 60).round(1),
    }
    for key, draw in draws.items():  # five codes, each filled for all its rows at once
        rows = code == _OBS[key]
        value[rows] = draw(int(rows.sum()), has[rows], age[rows])
    return value


def _gp_events(rng: np.random.Generator,
               people: _People) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
    """Diagnoses, monitoring after them, everyday encounters and smoking status, with notes."""
    n = people.n
    diag_patient, diag_cond = np.nonzero(people.conditions)
    diag_day = people.diagnosed[diag_patient, diag_cond]

    mon_counts = rng.poisson(_MON_MEAN, size=(n, _MON_MEAN.size)) * people.conditions[:, _MON_COND]
    mon_patient, mon_k = _expand(mon_counts)
    mon_low = np.maximum(people.earliest[mon_patient], people.diagnosed[mon_patient, _MON_COND[mon_k]])
    mon_day = _uniform_days(rng, mon_low, _REF)

    rate = np.interp(people.age, _EVERYDAY_RATE_AGES, _EVERYDAY_RATE) * (1 + 0.15 * people.conditions.sum(1))
    day_patient = np.repeat(np.arange(n), rng.poisson(rate))
    day_code = _EVERYDAY_CODE[_pick_by_group(rng, people.group[day_patient], _EVERYDAY_WEIGHTS)]
    day_day = _uniform_days(rng, people.earliest[day_patient], _REF)

    smoke_patient = np.nonzero((people.age >= 16) & (rng.random(n) < 0.7))[0]
    smoke_code = _OBS["never_smoked"] + people.smoking[smoke_patient]
    smoke_day = _uniform_days(rng, people.earliest[smoke_patient], _REF)

    patient = np.concatenate([diag_patient, mon_patient, day_patient, smoke_patient])
    code = np.concatenate([diag_cond, _MON_CODE[mon_k], day_code, smoke_code])
    day = np.concatenate([diag_day, mon_day, day_day, smoke_day])
    order = np.lexsort((code, day, patient))
    patient, code, day = patient[order], code[order], day[order]

    notes = _notes(rng, people, patient)
    table = pa.table([
        people.nhs.take(patient), _dates(day), _CODE_ARR.take(code), _TERM_ARR.take(code),
        pa.array(_measurements(rng, people, patient, code), type=pa.float64(), from_pandas=True), notes,
    ], schema=SCHEMAS["gp_events"])
    return table, patient, code, day


def _notes(rng: np.random.Generator, people: _People, patient: np.ndarray) -> pa.Array:
    """Free-text notes on some events; a few leak the patient's name, NHS number, DOB, postcode or phone."""
    m = patient.shape[0]
    has_note = rng.random(m) < NOTE_SHARE
    plain = rng.integers(0, len(_PLAIN_NOTES), m)
    leak_rows = np.nonzero(has_note & (rng.random(m) < IDENTIFIER_NOTE_SHARE))[0]
    who = patient[leak_rows]
    k = leak_rows.size
    kind = rng.integers(0, 5, k)
    kind = np.where((kind == 1) & people.nhs_missing[who], 0, kind)  # no number to leak: leak the name
    tail = _NOTES_ARR.take(plain[leak_rows])
    nhs = people.nhs.take(who)
    spaced = _join(pc.utf8_slice_codeunits(nhs, 0, 3), " ", pc.utf8_slice_codeunits(nhs, 3, 6), " ",
                   pc.utf8_slice_codeunits(nhs, 6, 10))
    dob = pc.strftime(_dates(people.dob[who]).cast(pa.timestamp("s")), format="%d/%m/%Y")
    leaks = pa.concat_arrays([
        _join("Seen: ", people.given.take(who), " ", people.family.take(who), ". ", tail),
        _join("NHS no ", spaced, " confirmed. ", tail),
        _join("DOB ", dob, " checked. ", tail),
        _join("Home visit to ", people.postcode.take(who), ". ", tail),
        _join("Contact mobile 07700 900", _padded(rng.integers(0, 1000, k), 3), ". ", tail),
    ])
    index = plain.copy()
    index[leak_rows] = len(_PLAIN_NOTES) + kind * k + np.arange(k)
    pool = pa.concat_arrays([_NOTES_ARR, leaks])
    return pool.take(pa.array(index, type=pa.int64(), mask=~has_note))


def _admissions(rng: np.random.Generator, people: _People) -> pa.Table:
    """Spells: more with age and conditions; diagnosis often the patient's own condition."""
    rate = np.interp(people.age, _ADMIT_RATE_AGES, _ADMIT_RATE) * (1 + 0.35 * people.conditions.sum(1))
    patient = np.repeat(np.arange(people.n), rng.poisson(rate))
    m = patient.shape[0]
    own = people.conditions[patient]
    linked = own.any(axis=1) & (rng.random(m) < _ADMIT_LINKED_SHARE)
    diagnosis = _N_COND + _pick_by_group(rng, people.group[patient], _ADMIT_OTHER_WEIGHTS)
    if linked.any():
        diagnosis[linked] = _pick_true(rng, own[linked])
    emergency = rng.random(m) < _ADMIT_EMERGENCY[diagnosis]

    home = _DISTRICT_TRUST[people.district[patient]]
    away = rng.random(m) < _TRUST_OTHER_SHARE
    trust = np.where(away, (home + rng.integers(1, len(_TRUSTS), m)) % len(_TRUSTS), home)
    # A stable local number per patient and trust: a per-trust affine bijection of the patient index.
    index = people.first_index + patient
    mrn = (index * _MRN_MULTIPLIER[trust] + _MRN_OFFSET[trust]) % 10**8

    stay = np.where(emergency, np.floor(rng.lognormal(1.0, 1.0, m) * (1 + people.age[patient] / 80)),
                    np.where(rng.random(m) < 0.55, 0, 1 + rng.poisson(2.0, m))).astype(np.int64)
    admitted = _uniform_days(rng, people.earliest[patient], _REF)
    discharged = np.minimum(admitted + stay, _REF)
    order = np.lexsort((admitted, patient))
    patient, trust, mrn = patient[order], trust[order], mrn[order]
    return pa.table([
        people.nhs.take(patient), _join(_MRN_LETTER_ARR.take(trust), _padded(mrn, 8)),
        _dates(admitted[order]), _dates(discharged[order]), _ICD_ARR.take(diagnosis[order]),
        _METHOD_ARR.take(emergency[order].astype(np.int64)), _TRUST_ARR.take(trust),
    ], schema=SCHEMAS["admissions"])


def _prescriptions(rng: np.random.Generator, people: _People, event_patient: np.ndarray,
                   event_code: np.ndarray, event_day: np.ndarray) -> pa.Table:
    """Repeats after each diagnosis, and acute items on the day of an everyday encounter."""
    treated = people.conditions[:, _REP_COND] & (rng.random((people.n, _REP_COND.size)) < _REP_SHARE)
    rep_patient, rep_k = _expand(rng.poisson(_REP_MEAN, size=treated.shape) * treated)
    rep_low = np.maximum(people.earliest[rep_patient], people.diagnosed[rep_patient, _REP_COND[rep_k]])
    rep_day = _uniform_days(rng, rep_low, _REF)

    acute = np.nonzero(rng.random(event_code.shape[0]) < _ACUTE_P[event_code])[0]
    patient = np.concatenate([rep_patient, event_patient[acute]])
    drug = np.concatenate([_REP_DRUG[rep_k], _ACUTE_DRUG[event_code[acute]]])
    day = np.concatenate([rep_day, event_day[acute]])
    order = np.lexsort((drug, day, patient))
    patient, drug, day = patient[order], drug[order], day[order]
    quantity = _DRUG_QUANTITY[drug] * np.where(rng.random(drug.shape[0]) < 0.25, 2, 1)
    return pa.table([
        people.nhs.take(patient), _dates(day), _BNF_ARR.take(drug), _DRUG_NAME_ARR.take(drug),
        pa.array(quantity, type=pa.int32()), pa.array((quantity * _DRUG_UNIT_COST[drug]).round(2)),
    ], schema=SCHEMAS["prescriptions"])


def generate_block(seed: int, block: int, n: int,
                   permutation: tuple[int, int] | None = None) -> dict[str, pa.Table]:
    """All four tables for patients ``block * BLOCK_SIZE`` onwards, from that block's own stream."""
    if not 0 < n <= BLOCK_SIZE:
        raise ValueError(f"a block holds 1 to {BLOCK_SIZE} patients")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(1, block))))
    people = _people(rng, block, n, permutation or _nhs_permutation(seed))
    events, event_patient, event_code, event_day = _gp_events(rng, people)
    return {
        "patients": people.table,
        "gp_events": events,
        "admissions": _admissions(rng, people),
        "prescriptions": _prescriptions(rng, people, event_patient, event_code, event_day),
    }


def iter_chunks(patients: int = DEFAULT_PATIENTS, seed: int = DEFAULT_SEED,
                chunk_size: int = DEFAULT_CHUNK_SIZE):
    """Yield (patients in chunk, tables) lazily, one chunk of whole blocks at a time."""
    _check_arguments(patients, chunk_size)
    permutation = _nhs_permutation(seed)
    blocks_per_chunk = max(1, math.ceil(chunk_size / BLOCK_SIZE))
    n_blocks = math.ceil(patients / BLOCK_SIZE)
    for first in range(0, n_blocks, blocks_per_chunk):
        parts = [generate_block(seed, b, min(BLOCK_SIZE, patients - b * BLOCK_SIZE), permutation)
                 for b in range(first, min(first + blocks_per_chunk, n_blocks))]
        yield (sum(p["patients"].num_rows for p in parts),
               {name: pa.concat_tables([p[name] for p in parts]) for name in TABLES})


def _check_arguments(patients: int, chunk_size: int) -> None:
    if not isinstance(patients, int) or isinstance(patients, bool) or not 0 < patients <= MAX_PATIENTS:
        raise ValueError(f"patients must be a whole number from 1 to {MAX_PATIENTS:,}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError("chunk_size must be a positive whole number")


def generate(out_dir: Path, patients: int = DEFAULT_PATIENTS, seed: int = DEFAULT_SEED,
             chunk_size: int = DEFAULT_CHUNK_SIZE, progress: bool = False) -> dict:
    """Write the four Parquet tables and datasets.json to ``out_dir``; return their paths and rows.

    ``chunk_size`` (rounded up to whole blocks of ``BLOCK_SIZE``) bounds memory and sets the
    Parquet row groups; values depend only on ``seed`` and ``patients``.
    """
    _check_arguments(patients, chunk_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"{name}.parquet" for name in TABLES}
    rows = dict.fromkeys(TABLES, 0)
    writers = {name: pq.ParquetWriter(paths[name], SCHEMAS[name], compression="zstd") for name in TABLES}
    try:
        with tqdm(total=patients, unit="patient", unit_scale=True, disable=not progress,
                  desc="synthetic data") as bar:
            for done, tables in iter_chunks(patients, seed, chunk_size):
                for name, table in tables.items():
                    writers[name].write_table(table)
                    rows[name] += table.num_rows
                bar.update(done)
    finally:
        for writer in writers.values():
            writer.close()
    datasets = out_dir / "datasets.json"
    datasets.write_text(json.dumps(catalogue(rows, seed), indent=2) + "\n", encoding="utf-8")
    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "patients": patients,
        "rows": rows,
        "paths": {name: str(path) for name, path in paths.items()},
        "datasets_json": str(datasets),
    }
