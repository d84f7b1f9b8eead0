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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from disclosure.engine.outputs import check_regression_numbers
from disclosure.engine.policy import Policy, default_policy
from disclosure.engine.verdict import simple_verdict

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


def check_model_text(name: str, content: bytes | str, *, policy: Policy | None = None) -> dict[str, Any] | None:
    """The regression verdict of a text file of model summaries, or None when it holds none.

    Each summary is judged by ``check_regression_numbers`` (the rules of ``check_regression``) and the
    worst status wins; a summary whose residual degrees of freedom cannot be read goes to review saying so.
    The verdict is never better than review: the levels of categorical regressors cannot be seen in text.
    """
    policy = policy or default_policy()
    text = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else content
    summaries = read_model_summaries(text)
    if not summaries:
        return None
    several = len(summaries) > 1
    criteria: list[dict[str, Any]] = []
    for index, summary in enumerate(summaries, start=1):
        prefix = f"{summary.label()}: " if several else ""
        one = check_regression_numbers(
            summary.residual_dof,
            residuals_printed=summary.residuals_printed,
            unread=summary.notes,
            policy=policy,
        )
        for c in one["criteria"]:
            if c["rule"] == "categorical_levels" and index > 1:
                continue  # the same for every summary of the file: recorded once
            entry = {**c, "model": index}
            if c["reason"] and c["rule"] != "categorical_levels":
                entry["reason"] = prefix + c["reason"]
            criteria.append(entry)
    return simple_verdict(
        "regression",
        policy,
        criteria,
        method="text",
        file=name,
        models=[s.to_dict() for s in summaries],
    )
