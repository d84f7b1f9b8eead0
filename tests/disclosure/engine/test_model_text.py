"""Model summaries written as text: what is recognised, what is read from it and the verdict it gets."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from disclosure.engine import default_policy
from disclosure.engine.model_text import (
    MAX_EXAMPLES_PER_STATUS,
    MAX_SUMMARIES_ITEMISED,
    check_model_text,
    read_model_summaries,
)
from disclosure.engine.outputs import check_regression, check_regression_numbers
from disclosure.engine.verdict import combine_status


def admissions(n: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "deprivation_decile": rng.integers(1, 11, n)})
    frame["adm"] = rng.poisson(1 + 0.1 * frame["deprivation_decile"])
    frame["los"] = rng.normal(size=n) + frame["deprivation_decile"]
    frame["died"] = (frame["los"] + rng.normal(size=n) > 6).astype(int)
    frame["route"] = rng.integers(0, 3, n)
    return frame


def fitted(kind: str, frame: pd.DataFrame) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and small-sample notices are beside the point here
        if kind == "poisson":
            return smf.poisson("adm ~ C(sex) + deprivation_decile", data=frame).fit(disp=0)
        if kind == "ols":
            return smf.ols("los ~ C(sex) + deprivation_decile", data=frame).fit()
        if kind == "wls":
            return smf.wls("los ~ deprivation_decile", data=frame, weights=np.ones(len(frame))).fit()
        if kind == "logit":
            return smf.logit("died ~ C(sex) + deprivation_decile", data=frame).fit(disp=0)
        if kind == "probit":
            return smf.probit("died ~ C(sex) + deprivation_decile", data=frame).fit(disp=0)
        if kind == "negbin":
            return smf.negativebinomial("adm ~ C(sex) + deprivation_decile", data=frame).fit(disp=0)
        if kind == "mnlogit":
            return smf.mnlogit("route ~ deprivation_decile", data=frame).fit(disp=0)
        if kind == "glm":
            return smf.glm("adm ~ C(sex) + deprivation_decile", data=frame, family=sm.families.Poisson()).fit()
    raise AssertionError(kind)


MODEL_NAMES = {
    "poisson": "Poisson",
    "ols": "OLS",
    "wls": "WLS",
    "logit": "Logit",
    "probit": "Probit",
    "negbin": "NegativeBinomial",
    "mnlogit": "MNLogit",
    "glm": "GLM",
}


def summary_text(kind: str, frame: pd.DataFrame, *, two: bool = False) -> str:
    result = fitted(kind, frame)
    return (result.summary2() if two else result.summary()).as_text()


@pytest.mark.parametrize("two", [False, True], ids=["summary", "summary2"])
@pytest.mark.parametrize("kind", sorted(MODEL_NAMES))
def test_statsmodels_summary_is_read_with_its_own_residual_dof(kind: str, two: bool) -> None:
    result = fitted(kind, admissions(300))

    (summary,) = read_model_summaries(summary_text(kind, admissions(300), two=two))

    assert summary.source == "statsmodels"
    assert summary.model == MODEL_NAMES[kind]
    assert summary.residual_dof == float(result.df_resid)
    assert summary.observations == 300
    assert summary.model_dof == float(result.df_model)


@pytest.mark.parametrize("kind", ["poisson", "ols", "logit"])
def test_statsmodels_summary_with_plenty_of_rows_goes_to_review_as_a_regression(kind: str) -> None:
    verdict = check_model_text("model.txt", summary_text(kind, admissions(300)).encode())

    assert verdict is not None
    assert verdict["output_type"] == "regression"
    assert verdict["status"] == "review"
    rules = {c["rule"]: c for c in verdict["criteria"]}
    assert rules["residual_dof"]["status"] == "pass"
    assert rules["categorical_levels"]["status"] == "review"
    assert not any("unrecognised_output" in r for r in verdict["reasons"])
    assert any("cannot be seen in a printed summary" in r for r in verdict["reasons"])


@pytest.mark.parametrize("kind", ["poisson", "ols"])
def test_statsmodels_summary_fitted_on_eight_rows_fails_on_residual_dof(kind: str) -> None:
    verdict = check_model_text("model.txt", summary_text(kind, admissions(8, seed=11)))

    assert verdict is not None
    assert verdict["status"] == "fail"
    dof = next(c for c in verdict["criteria"] if c["rule"] == "residual_dof")
    assert dof["status"] == "fail"
    assert dof["value"] == 5.0
    assert "residual_dof: residual degrees of freedom 5 below 10" in verdict["reasons"]


def test_text_verdict_uses_the_same_criteria_and_parameters_as_a_fitted_model() -> None:
    result = fitted("poisson", admissions(8, seed=11))

    from_fit = check_regression(result)
    from_text = check_regression_numbers(float(result.df_resid))

    assert [c["rule"] for c in from_text["criteria"]] == [c["rule"] for c in from_fit["criteria"]]
    assert [c["parameters"] for c in from_text["criteria"]] == [c["parameters"] for c in from_fit["criteria"]]
    assert from_text["criteria"][0]["status"] == from_fit["criteria"][0]["status"] == "fail"


R_LM = """
Call:
lm(formula = los ~ sex + deprivation_decile, data = adm)

Residuals:
    Min      1Q  Median      3Q     Max
-2.8815 -0.6902  0.0311  0.7120  3.0457

Coefficients:
                   Estimate Std. Error t value Pr(>|t|)
(Intercept)        -0.21930    0.16021  -1.369    0.172
sexM                0.04127    0.11870   0.348    0.728
deprivation_decile  1.01544    0.02098  48.401   <2e-16 ***
---
Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1

Residual standard error: 1.012 on 294 degrees of freedom
  (3 observations deleted due to missingness)
Multiple R-squared:  0.8893,\tAdjusted R-squared:  0.8886
F-statistic:  1181 on 2 and 294 DF,  p-value: < 2.2e-16
"""

RESIDUALS_BLOCK = "Residuals:\n    Min      1Q  Median      3Q     Max\n-2.8815 -0.6902  0.0311  0.7120  3.0457\n"

R_GLM = """
Call:
glm(formula = adm ~ sex + deprivation_decile, family = poisson, data = adm)

Coefficients:
                   Estimate Std. Error z value Pr(>|z|)
(Intercept)        0.021836   0.116502   0.187    0.851
sexM              -0.061277   0.088311  -0.694    0.488
deprivation_decile 0.078510   0.015490   5.069  4.0e-07 ***
---
Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1

(Dispersion parameter for poisson family taken to be 1)

    Null deviance: 402.77  on 299  degrees of freedom
Residual deviance: 376.45  on 297  degrees of freedom
AIC: 1003.2

Number of Fisher Scoring iterations: 5
"""

R_GLM_SMALL_WITH_DEVIANCE_RESIDUALS = """
Call:
glm(formula = died ~ deprivation_decile, family = binomial, data = few)

Deviance Residuals:
    Min       1Q   Median       3Q      Max
-1.5511  -0.8270  -0.4003   0.9125   1.7026

Coefficients:
                   Estimate Std. Error z value Pr(>|z|)
(Intercept)         -2.6012     1.9208  -1.354    0.176
deprivation_decile   0.4471     0.3122   1.432    0.152

(Dispersion parameter for binomial family taken to be 1)

    Null deviance: 12.217  on 8  degrees of freedom
Residual deviance:  9.462  on 7  degrees of freedom
AIC: 13.462

Number of Fisher Scoring iterations: 4
"""


def test_r_lm_summary_is_read_and_its_residuals_block_is_flagged_with_the_reason() -> None:
    (summary,) = read_model_summaries(R_LM)
    assert (summary.source, summary.model, summary.residual_dof) == ("R", "lm", 294.0)
    assert summary.deleted_missing == 3
    assert summary.residuals_printed == "min_max"

    verdict = check_model_text("lm.txt", R_LM)

    assert verdict is not None
    assert verdict["status"] == "review"
    shown = next(c for c in verdict["criteria"] if c["rule"] == "no_residuals")
    assert shown["status"] == "review"
    assert "no_residuals: the residuals' minimum and maximum are printed: one person's values each" in (
        verdict["reasons"]
    )


def test_r_lm_summary_without_its_residuals_block_is_not_flagged_for_residuals() -> None:
    text = R_LM.replace(RESIDUALS_BLOCK, "")

    verdict = check_model_text("lm.txt", text)

    assert verdict is not None
    assert next(c for c in verdict["criteria"] if c["rule"] == "no_residuals")["status"] == "pass"
    assert verdict["status"] == "review"  # the categorical levels still cannot be seen


def test_r_glm_summary_is_read_from_its_residual_deviance_line() -> None:
    (summary,) = read_model_summaries(R_GLM)
    assert (summary.model, summary.residual_dof, summary.residuals_printed) == ("glm", 297.0, None)

    verdict = check_model_text("glm.txt", R_GLM)

    assert verdict is not None
    assert verdict["status"] == "review"
    assert next(c for c in verdict["criteria"] if c["rule"] == "residual_dof")["status"] == "pass"


def test_r_glm_on_few_rows_printing_deviance_residuals_fails_on_both_rules() -> None:
    verdict = check_model_text("glm.txt", R_GLM_SMALL_WITH_DEVIANCE_RESIDUALS)

    assert verdict is not None
    assert verdict["status"] == "fail"
    statuses = {c["rule"]: c["status"] for c in verdict["criteria"]}
    assert statuses["residual_dof"] == statuses["no_residuals"] == "fail"
    assert any("quartiles are nearly individual values" in r for r in verdict["reasons"])


def test_r_lm_summary_that_prints_every_residual_fails() -> None:
    text = R_LM.replace(
        RESIDUALS_BLOCK,
        "Residuals:\n      1       2       3       4       5       6\n"
        "-0.2377  0.1403 -0.0811 -0.1403  0.3600  0.0000\n",
    ).replace("on 294 degrees of freedom", "on 3 degrees of freedom")

    verdict = check_model_text("lm.txt", text)

    assert verdict is not None
    assert verdict["status"] == "fail"
    assert "no_residuals: every residual is printed: one person's value each" in verdict["reasons"]


PROSE = """Methods

We fitted a Poisson model of admissions on sex and deprivation decile. The residual deviance was 376.45
on 297 degrees of freedom, and the residual standard error of the linear model was 1.012 on 294 degrees
of freedom. Results: Poisson regression showed a gradient by deprivation.
"""


def test_prose_that_mentions_degrees_of_freedom_holds_no_model_summary() -> None:
    assert read_model_summaries(PROSE) == []
    assert check_model_text("notes.txt", PROSE) is None


def test_file_of_two_summaries_fails_when_one_fails_and_says_which() -> None:
    text = summary_text("poisson", admissions(300)) + "\n\n" + summary_text("ols", admissions(8, seed=11))

    verdict = check_model_text("models.txt", text)

    assert verdict is not None
    assert [m["model"] for m in verdict["models"]] == ["Poisson", "OLS"]
    assert verdict["status"] == "fail"
    failed = [c for c in verdict["criteria"] if c["status"] == "fail"]
    assert [c["model"] for c in failed] == [2]
    assert any(r.startswith("residual_dof: statsmodels OLS summary at line") for r in verdict["reasons"])


def test_statsmodels_and_r_summaries_in_one_file_are_each_checked() -> None:
    verdict = check_model_text("both.txt", summary_text("logit", admissions(300)) + R_LM + R_GLM)

    assert verdict is not None
    read = [(m["source"], m["model"]) for m in verdict["models"]]
    assert read == [("statsmodels", "Logit"), ("R", "lm"), ("R", "glm")]
    assert verdict["status"] == "review"


def test_summary_whose_residual_dof_cannot_be_read_goes_to_review_saying_so() -> None:
    text = summary_text("poisson", admissions(300)).replace("Df Residuals:", "Df Resid.:")

    verdict = check_model_text("model.txt", text)

    assert verdict is not None
    dof = next(c for c in verdict["criteria"] if c["rule"] == "residual_dof")
    assert dof["status"] == "review"
    assert "could not be read" in dof["reason"]


def test_verdict_is_recorded_against_the_policy_given() -> None:
    policy = default_policy()

    verdict = check_model_text("glm.txt", R_GLM, policy=policy)

    assert verdict is not None
    assert verdict["policy"] == policy.identity()
    assert next(c for c in verdict["criteria"] if c["rule"] == "residual_dof")["parameters"] == {
        "min_dof": policy.get("regression", "min_dof")
    }


R_SCRIPT = """
set.seed(5)
n <- 300
adm <- data.frame(sex = sample(c("F", "M"), n, TRUE), deprivation_decile = sample(1:10, n, TRUE))
adm$los <- rnorm(n) + adm$deprivation_decile
adm$admissions <- rpois(n, 1 + 0.1 * adm$deprivation_decile)
adm$los[c(4, 9)] <- NA
print(summary(lm(los ~ sex + deprivation_decile, data = adm)))
print(summary(glm(admissions ~ sex + deprivation_decile, family = poisson, data = adm)))
print(summary(lm(los ~ sex + deprivation_decile, data = adm[1:8, ])))
"""


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="R is not installed: the hand-written R fixtures stand")
def test_summaries_printed_by_r_itself_are_read() -> None:
    text = subprocess.run(
        ["Rscript", "-e", R_SCRIPT], capture_output=True, text=True, check=True, timeout=120
    ).stdout  # nosec B603 B607 - a fixed script run by the test, no input from outside

    lm, glm, small = read_model_summaries(text)

    assert (lm.model, lm.residual_dof, lm.deleted_missing, lm.residuals_printed) == ("lm", 295.0, 2, "min_max")
    assert (glm.model, glm.residual_dof) == ("glm", 297.0)
    assert (small.model, small.residual_dof, small.deleted_missing) == ("lm", 4.0, 1)
    assert small.residuals_printed == "all"
    verdict = check_model_text("r.txt", text)
    assert verdict is not None
    assert verdict["status"] == "fail"


# Files of many summaries: each is still judged, but the criteria are one per rule for the whole file.


def many_summaries(count: int, *, last: str = "") -> str:
    """``count`` realistic summaries (statsmodels OLS and Logit, R lm and glm, in turn) fitted on plenty of
    rows, then ``last`` (more summaries) after them."""
    pieces = [
        summary_text("ols", admissions(300)),
        summary_text("logit", admissions(300)),
        R_LM,
        R_GLM,
    ]
    return "\n\n".join(pieces[i % len(pieces)] for i in range(count)) + "\n\n" + last


def test_file_of_many_summaries_gets_one_criterion_per_rule_naming_how_many_were_checked() -> None:
    verdict = check_model_text("models.txt", many_summaries(400))

    assert verdict is not None
    assert verdict["status"] == "review"
    assert [c["rule"] for c in verdict["criteria"]] == ["residual_dof", "categorical_levels", "no_residuals"]
    assert (verdict["summaries_found"], verdict["itemised_up_to"]) == (400, MAX_SUMMARIES_ITEMISED)
    assert len(verdict["models"]) == MAX_SUMMARIES_ITEMISED
    rules = {c["rule"]: c for c in verdict["criteria"]}
    assert rules["residual_dof"]["summaries"] == {"pass": 400, "review": 0, "fail": 0}
    assert rules["no_residuals"]["summaries"] == {"pass": 300, "review": 100, "fail": 0}  # every R lm summary
    assert len(rules["no_residuals"]["examples"]) == MAX_EXAMPLES_PER_STATUS
    assert len(verdict["reasons"]) == 2
    assert any(
        r.startswith("no_residuals: of the file's 400 model summaries (every one checked), 100 go to review")
        for r in verdict["reasons"]
    )


def test_what_is_recorded_for_a_file_of_summaries_does_not_grow_with_their_number() -> None:
    hundred = check_model_text("models.txt", many_summaries(100))
    thousand = check_model_text("models.txt", many_summaries(1000))

    assert hundred is not None and thousand is not None
    assert len(thousand["criteria"]) == len(hundred["criteria"]) == 3
    assert len(thousand["models"]) == len(hundred["models"]) == MAX_SUMMARIES_ITEMISED
    # The same record but for the counts' digits and separators.
    assert abs(len(json.dumps(thousand)) - len(json.dumps(hundred))) < 40


def test_failing_summary_far_beyond_the_itemised_ones_still_fails_the_file_and_is_named() -> None:
    small = summary_text("ols", admissions(8, seed=11))
    text = many_summaries(200, last=small)
    line = read_model_summaries(text)[-1].line

    verdict = check_model_text("models.txt", text)

    assert verdict is not None
    assert verdict["status"] == "fail"
    dof = next(c for c in verdict["criteria"] if c["rule"] == "residual_dof")
    assert dof["status"] == "fail"
    assert dof["summaries"] == {"pass": 200, "review": 0, "fail": 1}
    assert dof["examples"] == [
        {
            "model": 201,
            "summary": f"statsmodels OLS summary at line {line}",
            "status": "fail",
            "reason": "residual degrees of freedom 5 below 10",
            "value": 5.0,
        }
    ]
    assert any(
        r.startswith("residual_dof: of the file's 201 model summaries (every one checked), 1 fail on this rule")
        and f"OLS summary at line {line}: residual degrees of freedom 5 below 10" in r
        for r in verdict["reasons"]
    )


def test_r_summary_printing_every_residual_beyond_the_itemised_ones_fails_the_file() -> None:
    every = R_LM.replace(
        RESIDUALS_BLOCK,
        "Residuals:\n      1       2       3       4       5       6\n"
        "-0.2377  0.1403 -0.0811 -0.1403  0.3600  0.0000\n",
    ).replace("on 294 degrees of freedom", "on 3 degrees of freedom")

    verdict = check_model_text("models.txt", many_summaries(60, last=every))

    assert verdict is not None
    assert verdict["status"] == "fail"
    shown = next(c for c in verdict["criteria"] if c["rule"] == "no_residuals")
    assert shown["summaries"] == {"pass": 45, "review": 15, "fail": 1}
    assert [(e["model"], e["status"], e["printed"]) for e in shown["examples"]][0] == (61, "fail", "all")


def test_summary_whose_dof_cannot_be_read_beyond_the_itemised_ones_goes_to_review_saying_so() -> None:
    unreadable = summary_text("poisson", admissions(300)).replace("Df Residuals:", "Df Resid.:")

    verdict = check_model_text("models.txt", many_summaries(40, last=unreadable))

    assert verdict is not None
    dof = next(c for c in verdict["criteria"] if c["rule"] == "residual_dof")
    assert dof["status"] == "review"
    assert dof["summaries"]["review"] == 1
    assert "Poisson summary at line" in dof["reason"] and "could not be read" in dof["reason"]


def test_worst_failing_summaries_are_named_first_lowest_residual_dof_first() -> None:
    failing = "".join(R_LM.replace("on 294 degrees of freedom", f"on {dof} degrees of freedom") for dof in (8, 6, 9, 7))

    verdict = check_model_text("models.txt", many_summaries(30, last=failing))

    assert verdict is not None
    dof = next(c for c in verdict["criteria"] if c["rule"] == "residual_dof")
    assert dof["summaries"]["fail"] == 4
    assert [e["value"] for e in dof["examples"]] == [6.0, 7.0, 8.0][:MAX_EXAMPLES_PER_STATUS]


@pytest.mark.parametrize("failing_at", [1, 17, 35])
def test_file_of_many_summaries_gets_the_status_its_summaries_get_one_by_one(failing_at: int) -> None:
    pieces = [summary_text("logit", admissions(300)), R_LM, R_GLM] * 12
    pieces[failing_at] = R_GLM_SMALL_WITH_DEVIANCE_RESIDUALS

    whole = check_model_text("models.txt", "\n".join(pieces))
    one_by_one = [check_model_text("one.txt", piece) for piece in pieces]

    assert whole is not None and all(v is not None for v in one_by_one)
    assert whole["status"] == combine_status(v["status"] for v in one_by_one if v is not None) == "fail"
    for rule in ("residual_dof", "no_residuals"):
        grouped = next(c for c in whole["criteria"] if c["rule"] == rule)
        singles = [next(c for c in v["criteria"] if c["rule"] == rule) for v in one_by_one if v is not None]
        assert grouped["status"] == combine_status(c["status"] for c in singles)
        assert grouped["summaries"] == {s: sum(c["status"] == s for c in singles) for s in ("pass", "review", "fail")}


def test_file_at_the_itemised_limit_keeps_one_criterion_per_summary_and_one_more_is_grouped() -> None:
    at_limit = check_model_text("models.txt", many_summaries(MAX_SUMMARIES_ITEMISED))
    beyond = check_model_text("models.txt", many_summaries(MAX_SUMMARIES_ITEMISED + 1))

    assert at_limit is not None and beyond is not None
    assert len(at_limit["criteria"]) == 2 * MAX_SUMMARIES_ITEMISED + 1  # categorical levels recorded once
    assert "summaries_found" not in at_limit
    assert len(at_limit["models"]) == MAX_SUMMARIES_ITEMISED
    assert len(beyond["criteria"]) == 3
    assert beyond["summaries_found"] == MAX_SUMMARIES_ITEMISED + 1
