"""The assurance page's ASVS and SATRE maps stay true: every requirement listed once, every status
one of four words, every `met` row with its evidence, and every file and test it names real.

Reads docs/assurance/README.md only (no app, no database), so it runs in well under a second.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.security.figures import record

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "assurance" / "README.md"
STATUSES = ("met", "partly", "not met", "not applicable")

# Every level-1 and level-2 requirement of ASVS 5.0.0, as "section: first-last" ranges of the
# requirement numbers (level-3-only requirements are left out, so some sections have none).
_ASVS_5_0_L1_L2 = """
V1.1:1-2 V1.2:1-9 V1.3:1-11 V1.4:1-3 V1.5:1-2
V2.1:1-3 V2.2:1-3 V2.3:1-4 V2.4:1-1
V3.2:1-2 V3.3:1-4 V3.4:1-6 V3.5:1-5 V3.7:1-2
V4.1:1-3 V4.2:1-1 V4.3:1-2 V4.4:1-4
V5.1:1-1 V5.2:1-3 V5.3:1-2 V5.4:1-3
V6.1:1-3 V6.2:1-12 V6.3:1-4 V6.4:1-4 V6.5:1-5 V6.6:1-3 V6.8:1-4
V7.1:1-3 V7.2:1-4 V7.3:1-2 V7.4:1-5 V7.5:1-2 V7.6:1-2
V8.1:1-2 V8.2:1-3 V8.3:1-1 V8.4:1-1
V9.1:1-3 V9.2:1-4
V10.1:1-2 V10.2:1-2 V10.3:1-4 V10.4:1-11 V10.5:1-5 V10.6:1-2 V10.7:1-3
V11.1:1-2 V11.2:1-3 V11.3:1-3 V11.4:1-4 V11.5:1-1 V11.6:1-1
V12.1:1-3 V12.2:1-2 V12.3:1-4
V13.1:1-1 V13.2:1-5 V13.3:1-2 V13.4:1-5
V14.1:1-2 V14.2:1-4 V14.3:1-3
V15.1:1-3 V15.2:1-3 V15.3:1-7
V16.1:1-1 V16.2:1-5 V16.3:1-4 V16.4:1-3 V16.5:1-3
V17.1:1-1 V17.2:1-4 V17.3:1-2
"""

_REFERENCE = re.compile(r"`([\w./-]+\.(?:py|md|yml|yaml|toml))(?:::([\w-]+))?`")


def expected_asvs_ids() -> set[str]:
    ids = set()
    for item in _ASVS_5_0_L1_L2.split():
        section, numbers = item.split(":")
        first, last = (int(n) for n in numbers.split("-"))
        ids.update(f"{section}.{n}" for n in range(first, last + 1))
    return ids


def section(heading_prefix: str) -> str:
    """The text of the `## ` section whose heading starts with ``heading_prefix``."""
    text = PAGE.read_text(encoding="utf-8")
    parts = re.split(r"^(?=## )", text, flags=re.MULTILINE)
    found = [p for p in parts if p.startswith(f"## {heading_prefix}")]
    assert len(found) == 1, f"expected one section starting '## {heading_prefix}' in {PAGE}"
    return found[0]


def rows(text: str, id_pattern: str) -> list[tuple[list[str], list[str]]]:
    """Table rows whose first cell holds requirement ids: (ids, cells)."""
    found = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        ids = [i.strip() for i in cells[0].split(",")]
        if ids and all(re.fullmatch(id_pattern, i) for i in ids):
            found.append((ids, cells))
    return found


def check_rows(text: str, id_pattern: str) -> Counter[str]:
    """Statuses counted per row id; fails on a duplicate id, an unknown status or a `met` row
    that names no evidence."""
    statuses: Counter[str] = Counter()
    seen: set[str] = set()
    for ids, cells in rows(text, id_pattern):
        assert len(cells) == 5, f"{ids}: expected 5 cells, got {len(cells)}"
        status, evidence = cells[2], cells[4]
        assert status in STATUSES, f"{ids}: status {status!r} is not one of {STATUSES}"
        duplicated = seen.intersection(ids)
        assert not duplicated, f"listed twice: {sorted(duplicated)}"
        seen.update(ids)
        if status == "met":
            assert _REFERENCE.search(evidence) or evidence.startswith("no test"), (
                f"{ids}: a met row must name a test, file or rule, or say 'no test'"
            )
        if status == "not applicable":
            assert cells[3], f"{ids}: say why it does not apply"
        statuses[status] += len(ids)
    return statuses


def test_the_asvs_map_lists_every_level_1_and_2_requirement_of_5_0_once() -> None:
    text = section("OWASP ASVS 5.0")
    listed = [i for ids, _ in rows(text, r"V\d+\.\d+\.\d+") for i in ids]

    assert len(listed) == len(set(listed)), "an id is listed twice"
    assert set(listed) - expected_asvs_ids() == set(), "ids that are not level 1 or 2 requirements of 5.0.0"
    assert expected_asvs_ids() - set(listed) == set(), "level 1 or 2 requirements missing from the map"


def test_every_asvs_and_satre_row_has_a_known_status_and_its_evidence() -> None:
    asvs = check_rows(section("OWASP ASVS 5.0"), r"V\d+\.\d+\.\d+")
    satre = check_rows(section("SATRE"), r"\d\.\d\.\d\d")

    assert sum(asvs.values()) == len(expected_asvs_ids())
    assert sum(satre.values()) > 0
    for name, counts in (("ASVS 5.0 L1+L2", asvs), ("SATRE v2", satre)):
        for status in STATUSES:
            record(f"map: {name} requirements {status}", counts[status])


@pytest.mark.parametrize("heading", ["OWASP ASVS 5.0", "SATRE"])
def test_every_file_test_and_rule_the_maps_name_exists(heading: str) -> None:
    missing = []
    references = _REFERENCE.findall(section(heading))
    assert references, f"the {heading} section names no evidence at all"
    for path, name in references:
        target = ROOT / path
        if not target.is_file():
            missing.append(path)
            continue
        if not name:
            continue
        source = target.read_text(encoding="utf-8")
        if path.endswith(".py"):
            defined = re.search(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", source, re.MULTILINE)
        else:
            defined = re.search(rf"^\s*-?\s*id:\s*{re.escape(name)}\s*$", source, re.MULTILINE)
        if not defined:
            missing.append(f"{path}::{name}")

    assert not missing, f"the {heading} map names things that do not exist: {missing}"


def test_the_gap_list_names_exactly_the_asvs_requirements_not_met() -> None:
    text = section("OWASP ASVS 5.0")
    not_met = {i for ids, cells in rows(text, r"V\d+\.\d+\.\d+") if cells[2] == "not met" for i in ids}
    gaps = text.split("### The gaps, in one list", 1)[1]

    assert set(re.findall(r"V\d+\.\d+\.\d+", gaps)) == not_met
