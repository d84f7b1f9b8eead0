"""What SACRO-Viewer reads beside results.json: ``config.json``, the thresholds the outputs were checked with.

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
