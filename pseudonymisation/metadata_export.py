"""A dataset's catalogue entry as DCAT 3 in JSON-LD: what it is, what it holds (columns and their
roles, never values), its versions, who may use it and under which restrictions, and the opt-out
lists that remove people from every extract of it.

Why DCAT rather than the HDR UK dataset metadata schema: DCAT is a W3C Recommendation with a stable,
versioned vocabulary that generic catalogues (CKAN, data.europa.eu, the UK government's) already
read; the HDR UK schema is richer for health data but revised often, and most of its required
fields (e.g. coverage, provenance, accessibility timings) have no source in this service yet. The
export keeps to DCAT and Dublin Core terms, plus CSVW for the columns and a small ``tre:``
vocabulary for what neither has (column roles, opt-out lists); an HDR UK view could be derived from
it. Pure: it takes plain values, so a command or a page can call it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "csvw": "http://www.w3.org/ns/csvw#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "tre": "urn:tre:vocab:",
}
ACCESS_RIGHTS = "http://publications.europa.eu/resource/authority/access-right/RESTRICTED"
RESTRICTIONS = (
    "Available only inside the trusted research environment, to the members of a project the data "
    "access committee approved, for the columns it approved, after every member signed the current "
    "data access agreement and holds in-date safe-researcher training.",
    "Direct identifiers are replaced by tokens of the project's own key; quasi-identifiers are "
    "generalised as the extract schema says; nothing leaves without output checking.",
)


def dataset_metadata(
    dataset: Mapping[str, Any],
    columns: Sequence[Mapping[str, Any]],
    versions: Sequence[Mapping[str, Any]],
    optout_lists: Sequence[Mapping[str, Any]],
    *,
    base_url: str,
    publisher: str,
) -> dict[str, Any]:
    """One ``dcat:Dataset`` node. ``dataset`` has id, name, title, description, sensitivity and
    registered_at; each column name, role, data_type, description; each version version, rows,
    created_at; each opt-out list name, version, scope ("national" or "dataset")."""
    url = f"{base_url.rstrip('/')}/catalogue/datasets/{dataset['id']}"
    latest = max(versions, key=lambda v: v["version"]) if versions else None
    node: dict[str, Any] = {
        "@context": CONTEXT,
        "@id": url,
        "@type": "dcat:Dataset",
        "dct:identifier": dataset["name"],
        "dct:title": dataset["title"],
        "dct:description": dataset.get("description") or "",
        "dct:publisher": {"@type": "foaf:Agent", "foaf:name": publisher},
        "dct:issued": {"@value": _date(dataset.get("registered_at")), "@type": "xsd:date"},
        "dcat:landingPage": url,
        "dct:accessRights": {"@id": ACCESS_RIGHTS},
        "tre:sensitivity": dataset.get("sensitivity"),
        "tre:restrictions": list(RESTRICTIONS),
        "tre:optOutLists": [
            {"tre:name": o["name"], "tre:version": o["version"], "tre:appliesTo": o["scope"]} for o in optout_lists
        ],
        "csvw:tableSchema": {
            "csvw:column": [
                {"csvw:name": c["name"], "csvw:datatype": _datatype(c.get("data_type")),
                 "dct:description": c.get("description") or "", "tre:role": c["role"]}
                for c in columns
            ]
        },
    }
    if latest is not None:
        node["dcat:version"] = str(latest["version"])
        node["dct:modified"] = {"@value": _date(latest.get("created_at")), "@type": "xsd:date"}
        node["tre:rows"] = latest["rows"]
        node["dcat:hasVersion"] = [
            {"@id": f"{url}#version-{v['version']}", "@type": "dcat:Dataset", "dcat:version": str(v["version"]),
             "dct:issued": {"@value": _date(v.get("created_at")), "@type": "xsd:date"}, "tre:rows": v["rows"]}
            for v in sorted(versions, key=lambda v: v["version"])
        ]
    node["@context"] = {**CONTEXT, "foaf": "http://xmlns.com/foaf/0.1/"}
    return node


def _date(value: Any) -> str | None:
    if value is None:
        return None
    return value.date().isoformat() if hasattr(value, "date") else str(value)[:10]


def _datatype(data_type: str | None) -> str:
    return {"integer": "xsd:integer", "decimal": "xsd:decimal", "date": "xsd:date"}.get(data_type or "", "xsd:string")


__all__ = ["dataset_metadata"]
