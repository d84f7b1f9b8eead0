"""What SACRO's tools read beside our verdicts: ``config.json`` (the thresholds the outputs were checked with)
and each table's FAIR description in the StatBarns vocabulary.

SACRO-Viewer loads ``config.json`` from the results folder (when present) and shows it in its thresholds
panel; ACRO writes its own risk-appetite settings there. We write the same keys, filled from the TRE's policy
(the thresholds actually applied), plus the policy's name, version and sha256. The file has neither
``version`` nor ``results``, so SACRO-Viewer does not mistake it for the results file.
"""

from __future__ import annotations

from typing import Any

from disclosure.engine.policy import Policy

CONFIG_FILE = "config.json"


def acro_config(policy: Policy) -> dict[str, Any]:
    """ACRO's risk-appetite keys with the policy's values."""
    return {
        "safe_threshold": policy.get("frequency", "threshold"),
        "safe_dof_threshold": policy.get("regression", "min_dof"),
        "safe_nk_n": policy.get("magnitude", "nk_n"),
        "safe_nk_k": policy.get("magnitude", "nk_k"),
        "safe_pratio_p": policy.get("magnitude", "p_percent"),
        "check_missing_values": policy.get("magnitude", "missing") != "ignore",
        "survival_safe_threshold": policy.get("survival", "threshold"),
        "zeros_are_disclosive": policy.get("frequency", "zeros") == "disclosive",
        "safe_round_base": policy.get("rounding", "base"),
        "tre_policy": policy.identity(),
    }


# The StatBarns SDC vocabulary (https://w3id.org/statbarnsdc#, from the SACRO project) for the statistics our
# tables check: each statistic's class ("statbarn"), each class's disclosure risks, and for each risk the
# checks that address it (named as ACRO names them) and the mitigations that treat it.
STATBARN_CONTEXT = "https://w3id.org/statbarnsdc#"
STATBARN_OF = {
    "count": "Frequencies",
    "mean": "LinearAggregations",
    "sum": "LinearAggregations",
    "median": "Position",
    "iqr": "Position",
    "min": "Endpoints",
    "max": "Endpoints",
    "std": "Shape",
    "var": "Shape",
    "mode": "Mode",
}
RISKS_OF = {
    "Frequencies": ("ClassDisclosure", "Differencing", "LowCount"),
    "LinearAggregations": ("Dominance", "Differencing", "LowCount"),
    "Position": ("ClassDisclosure", "LowCount"),
    "Endpoints": ("ClassDisclosure", "LowCount"),
    "Shape": ("LowDOF",),
    "Mode": ("Differencing", "ClassDisclosure"),
}
CHECKS_OF = {
    "ClassDisclosure": ("RequiredZeroCheck", "PresenceOfZeroCheck"),
    "Differencing": ("PresenceOfLinkedTableCheck",),
    "Dominance": ("NKCheck", "PPercentCheck"),
    "LowCount": ("MinimumThresholdCheck",),
    "LowDOF": ("MinimumDoFCheck",),
}
MITIGATIONS_OF = {
    "ClassDisclosure": ("Noise", "Suppression"),
    "Differencing": ("Noise", "Suppression"),
    "Dominance": ("Noise", "OutlierRemoval", "Rounding", "Suppression"),
    "LowCount": ("Noise", "Rounding", "Suppression"),
    "LowDOF": ("Aggregation", "Noise", "OutlierRemoval", "Suppression"),
}
# Our rules -> the StatBarns check each one performs.
CHECK_OF_RULE = {
    "threshold": "MinimumThresholdCheck",
    "zeros": "PresenceOfZeroCheck",
    "class_disclosure": "RequiredZeroCheck",
    "identical_values": "RequiredZeroCheck",
    "nk_dominance": "NKCheck",
    "p_percent": "PPercentCheck",
    "degrees_of_freedom": "MinimumDoFCheck",
}
_WORST = {"pass": 0, "review": 1, "fail": 2}


def fair_description(statistic: str, rule_status: dict[str, str], dependent: str | None, independent: list) -> dict:
    """A table's FAIR record: its StatBarns class, risks, the checks those risks need with our outcome for
    each, the mitigations common to all its risks, and its variables. A needed check none of our rules
    performs in the session is "pass" (differencing is checked by the release ledger when submitted)."""
    statbarn = STATBARN_OF.get(statistic, "Position" if statistic.startswith("q") else "Frequencies")
    risks = RISKS_OF[statbarn]
    checks = list(dict.fromkeys(c for r in risks for c in CHECKS_OF[r]))
    common = [m for m in MITIGATIONS_OF[risks[0]] if all(m in MITIGATIONS_OF[r] for r in risks)]
    status = dict.fromkeys(checks, "pass")
    for rule, outcome in rule_status.items():
        check = CHECK_OF_RULE.get(rule)
        if check in status and _WORST.get(outcome, 0) > _WORST[status[check]]:
            status[check] = outcome
    return {
        "context": STATBARN_CONTEXT,
        "statbarn": statbarn,
        "risks": list(risks),
        "checks_needed": checks,
        "common_mitigations": sorted(common),
        "check_status": status,
        "dependent": dependent or "unknown",
        "independent": list(independent),
    }
