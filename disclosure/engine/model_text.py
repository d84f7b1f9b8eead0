"""Model summaries written as text: recognise them and read what the regression rules need.

A researcher who fits a model with plain statsmodels or R (outside the disclosure session) and writes its
printed summary to a text file gives the output checker a file the session never saw. This module reads
such a file line by line and recognises only the exact printed layouts it knows:

* statsmodels ``summary()`` (a title line "<Model> Regression Results" or "Generalized Linear Model
  Regression Results") and ``summary2()`` (a title line "Results: <name>"), each followed by a rule of
  "="; from its header it reads ``Model:``, ``Df Residuals:``, ``No. Observations:`` and ``Df Model:``;
* R's ``summary(lm(...))`` and ``summary(glm(...))``: a "Call:" line whose next line starts with
  ``lm(`` or ``glm(``; from the lines up to the next "Call:" it reads "Residual standard error: ... on N
  degrees of freedom" (lm) or "Residual deviance: ... on N degrees of freedom" (glm), "(k observations
  deleted due to missingness)" and whether a "Residuals:" block prints individual residuals.

Nothing is guessed: a block that starts like a model summary but whose residual degrees of freedom
cannot be read is returned with ``residual_dof`` None (the check sends it to a human saying so), and
text with neither start (prose that mentions degrees of freedom, a table) holds no model summary.

Every summary found is judged, however many the file holds, so the verdict is the worst of them all. What is
recorded is bounded: a file of more than ``MAX_SUMMARIES_ITEMISED`` summaries gets one criterion per rule
(counts of each status and the worst few named) instead of one per rule per summary (ADR 0063).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from disclosure.engine.outputs import check_regression_numbers
from disclosure.engine.policy import Policy, default_policy
from disclosure.engine.verdict import combine_status, criterion, simple_verdict

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SM_TITLE = re.compile(r"^\s*(?P<name>[A-Za-z][A-Za-z ]{0,60}?) Regression Results\s*$")
_SM2_TITLE = re.compile(r"^\s*Results: (?P<name>\S.{0,60}?)\s*$")
_RULE_EQ = re.compile(r"^\s*={20,}\s*$")
_RULE_DASH = re.compile(r"^\s*-{20,}\s*$")
_R_CALL = re.compile(r"^Call:\s*$")
_R_MODEL = re.compile(r"^\s*(?P<fn>lm|glm)\(")
_R_LM_DOF = re.compile(rf"^Residual standard error: (?:{_NUMBER}|NaN) on (?P<dof>\d+) degrees of freedom\s*$")
_R_GLM_DOF = re.compile(rf"^Residual deviance: +(?:{_NUMBER}|NaN) +on (?P<dof>\d+) +degrees of freedom\s*$")
_R_DELETED = re.compile(r"^\s*\((?P<k>\d+) observations? deleted due to missingness\)\s*$")
_R_RESIDUALS = re.compile(r"^(?:Deviance |Weighted )?Residuals:\s*$")
_R_QUANTILE_HEAD = re.compile(r"^\s*Min\s+1Q\s+Median\s+3Q\s+Max\s*$")


@dataclass(frozen=True)
class ModelSummary:
    """What one printed model summary says, as read (``None``: not printed or not readable)."""

    source: str  # "statsmodels" or "R"
    model: str  # the model's name as printed: "Poisson", "OLS", "lm", "glm"
    line: int  # the summary's first line in the file, from 1
    residual_dof: float | None
    observations: int | None = None
    model_dof: float | None = None
    deleted_missing: int | None = None  # R: observations dropped for missing values
    residuals_printed: str | None = None  # R: "min_max" (quantiles with Min/Max) or "all" (each residual)
    notes: list[str] = field(default_factory=list)

    def label(self) -> str:
        return f"{self.source} {self.model} summary at line {self.line}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model": self.model,
            "line": self.line,
            "residual_dof": self.residual_dof,
            "observations": self.observations,
            "model_dof": self.model_dof,
            "deleted_missing": self.deleted_missing,
            "residuals_printed": self.residuals_printed,
        }


def _header_value(lines: list[str], key: str) -> str | None:
    """The first word printed after ``key:`` in a statsmodels header (either column), None unless the key
    is there exactly once. The values read (a model's name, counts) are one word each; the first word,
    not the rest of the column, since a wide value can leave one space before the next column's key."""
    # The key starts a column: at the line's start or after a space, and "Model:" is not "Df Model:".
    pattern = re.compile(rf"(?<![^\s])(?<!Df ){re.escape(key)}:\s+(\S+)")
    found = [m.group(1) for text in lines for m in pattern.finditer(text)]
    return found[0] if len(found) == 1 else None


def _as_float(value: str | None) -> float | None:
    if value is None or not re.fullmatch(_NUMBER, value):
        return None
    return float(value)


def _statsmodels(lines: list[str], start: int, end: int, title_name: str) -> ModelSummary:
    """The header of a statsmodels summary: from its title (line ``start``) to the rule that ends the header
    block, before line ``end`` (the next summary's start or the end)."""
    header: list[str] = []
    rules_seen = 0
    for i in range(start + 1, end):
        text = lines[i]
        if _RULE_EQ.match(text) or _RULE_DASH.match(text):
            rules_seen += 1
            if rules_seen == 2:
                break
            continue
        if rules_seen == 0:
            break  # the title is not followed by a rule: not statsmodels' layout
        header.append(text)
    model = _header_value(header, "Model") or title_name.strip()
    dof = _as_float(_header_value(header, "Df Residuals"))
    nobs = _as_float(_header_value(header, "No. Observations"))
    notes = [] if dof is not None else ["its residual degrees of freedom (Df Residuals) could not be read"]
    return ModelSummary(
        source="statsmodels",
        model=model,
        line=start + 1,
        residual_dof=dof,
        observations=int(nobs) if nobs is not None and nobs.is_integer() else None,
        model_dof=_as_float(_header_value(header, "Df Model")),
        notes=notes,
    )


def _r_summary(lines: list[str], start: int, end: int, fn: str) -> ModelSummary:
    """An R summary of lm or glm: lines ``start`` ("Call:") up to ``end`` (the next "Call:" or the end)."""
    dof_line = _R_LM_DOF if fn == "lm" else _R_GLM_DOF
    dofs = [int(m.group("dof")) for text in lines[start:end] if (m := dof_line.match(text))]
    deleted = [int(m.group("k")) for text in lines[start:end] if (m := _R_DELETED.match(text))]
    printed = None
    for i in range(start, end):
        if _R_RESIDUALS.match(lines[i]) and i + 1 < end:
            head = lines[i + 1]
            if _R_QUANTILE_HEAD.match(head):
                printed = "min_max"
            elif head.strip() and not head.lstrip().startswith("ALL "):
                printed = "all"  # R prints every residual when there are 5 residual dof or fewer
            break
    notes = []
    if len(dofs) != 1:
        what = "Residual standard error" if fn == "lm" else "Residual deviance"
        notes.append(f"its residual degrees of freedom ('{what}: ... on N degrees of freedom') could not be read")
    return ModelSummary(
        source="R",
        model=fn,
        line=start + 1,
        residual_dof=float(dofs[0]) if len(dofs) == 1 else None,
        deleted_missing=deleted[0] if len(deleted) == 1 else None,
        residuals_printed=printed,
        notes=notes,
    )


def read_model_summaries(text: str) -> list[ModelSummary]:
    """Every model summary the text holds, in order; an empty list when it holds none."""
    lines = text.splitlines()
    starts: list[tuple[int, str, str]] = []  # (line index, kind, name)
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (m := _SM_TITLE.match(line)) and _RULE_EQ.match(nxt):
            starts.append((i, "statsmodels", m.group("name")))
        elif (m := _SM2_TITLE.match(line)) and _RULE_EQ.match(nxt):
            starts.append((i, "statsmodels", m.group("name")))
        elif _R_CALL.match(line) and (m := _R_MODEL.match(nxt)):
            starts.append((i, "R", m.group("fn")))
    summaries = []
    for k, (i, kind, name) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        if kind == "statsmodels":
            summaries.append(_statsmodels(lines, i, end, name))
        else:
            summaries.append(_r_summary(lines, i, end, name))
    return summaries


# A file holding more summaries than this gets one criterion per rule for the whole file instead of one per
# summary: every summary is still checked and the verdict is the same, but what is stored and shown stays
# bounded (a 16 MB file of summaries gave tens of thousands of criteria). Small files are itemised as before.
MAX_SUMMARIES_ITEMISED = 20
# In a per-rule criterion, how many summaries of each non-pass status are named, worst first.
MAX_EXAMPLES_PER_STATUS = 3

# Each summary's index in the file (from 1), the summary, and its criteria.
Judged = list[tuple[int, ModelSummary, list[dict[str, Any]]]]


def check_model_text(name: str, content: bytes | str, *, policy: Policy | None = None) -> dict[str, Any] | None:
    """The regression verdict of a text file of model summaries, or None when it holds none.

    Each summary is judged by ``check_regression_numbers`` (the rules of ``check_regression``) and the
    worst status wins; a summary whose residual degrees of freedom cannot be read goes to review saying so.
    The verdict is never better than review: the levels of categorical regressors cannot be seen in text.
    Up to ``MAX_SUMMARIES_ITEMISED`` summaries, each gets its own criteria; beyond it every summary is still
    judged but the criteria are one per rule with counts and the worst examples, and ``models`` lists the
    first ``MAX_SUMMARIES_ITEMISED`` summaries and ``summaries_found`` says how many there were.
    """
    policy = policy or default_policy()
    text = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else content
    summaries = read_model_summaries(text)
    if not summaries:
        return None
    judged = [(index, summary, _judge(summary, policy)) for index, summary in enumerate(summaries, start=1)]
    if len(summaries) <= MAX_SUMMARIES_ITEMISED:
        return simple_verdict(
            "regression",
            policy,
            _itemised(judged),
            method="text",
            file=name,
            models=[s.to_dict() for s in summaries],
        )
    return simple_verdict(
        "regression",
        policy,
        _per_rule(judged),
        method="text",
        file=name,
        models=[s.to_dict() for s in summaries[:MAX_SUMMARIES_ITEMISED]],
        summaries_found=len(summaries),
        itemised_up_to=MAX_SUMMARIES_ITEMISED,
    )


def _judge(summary: ModelSummary, policy: Policy) -> list[dict[str, Any]]:
    one = check_regression_numbers(
        summary.residual_dof,
        residuals_printed=summary.residuals_printed,
        unread=summary.notes,
        policy=policy,
    )
    return list(one["criteria"])


def _itemised(judged: Judged) -> list[dict[str, Any]]:
    """Each summary's own criteria, its reasons naming it when the file holds several."""
    several = len(judged) > 1
    criteria: list[dict[str, Any]] = []
    for index, summary, own in judged:
        prefix = f"{summary.label()}: " if several else ""
        for c in own:
            if c["rule"] == "categorical_levels" and index > 1:
                continue  # the same for every summary of the file: recorded once
            entry = {**c, "model": index}
            if c["reason"] and c["rule"] != "categorical_levels":
                entry["reason"] = prefix + c["reason"]
            criteria.append(entry)
    return criteria


def _per_rule(judged: Judged) -> list[dict[str, Any]]:
    """One criterion per rule over every summary: its status the worst of theirs, how many had each status,
    and the worst few of each non-pass status named (lowest residual dof first, then file order)."""
    by_rule: dict[str, list[tuple[int, ModelSummary, dict[str, Any]]]] = {}
    for index, summary, own in judged:
        for c in own:
            by_rule.setdefault(c["rule"], []).append((index, summary, c))
    criteria: list[dict[str, Any]] = []
    for rule, entries in by_rule.items():
        if rule == "categorical_levels":
            criteria.append({**entries[0][2], "model": 1})  # the same for every summary of the file: recorded once
            continue
        counts = {"pass": 0, "review": 0, "fail": 0}
        flagged: dict[str, list[tuple[int, ModelSummary, dict[str, Any]]]] = {"fail": [], "review": []}
        for entry in entries:
            counts[entry[2]["status"]] += 1
            if entry[2]["status"] in flagged:
                flagged[entry[2]["status"]].append(entry)
        examples: list[dict[str, Any]] = []
        for status, named in flagged.items():
            named.sort(key=lambda e: (_value_order(e[2]), e[0]))
            for index, summary, c in named[:MAX_EXAMPLES_PER_STATUS]:
                details = {k: v for k, v in c.items() if k not in ("rule", "parameters", "reason", "status")}
                examples.append(
                    {"model": index, "summary": summary.label(), "status": status, "reason": c["reason"], **details}
                )
        criteria.append(
            criterion(
                rule,
                combine_status(status for status, n in counts.items() if n),
                entries[0][2]["parameters"],
                _per_rule_reason(len(judged), counts, examples),
                summaries=counts,
                examples=examples,
            )
        )
    return criteria


def _value_order(c: dict[str, Any]) -> float:
    value = c.get("value")
    return float(value) if isinstance(value, int | float) else float("inf")


def _per_rule_reason(total: int, counts: dict[str, int], examples: list[dict[str, Any]]) -> str:
    if counts["fail"] == 0 and counts["review"] == 0:
        return ""
    parts = []
    if counts["fail"]:
        parts.append(f"{counts['fail']:,} fail")
    if counts["review"]:
        parts.append(f"{counts['review']:,} go to review")
    named = "; ".join(f"{e['summary']}: {e['reason']}" for e in examples)
    return (
        f"of the file's {total:,} model summaries (every one checked), {' and '.join(parts)} on this rule; "
        f"worst first, at most {MAX_EXAMPLES_PER_STATUS} per status: {named}"
    )
