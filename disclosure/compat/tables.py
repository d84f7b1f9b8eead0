"""Table helpers of ACRO's that notebooks and tests import."""

from __future__ import annotations

import numpy as np
import pandas as pd

SURVIVAL_GROUP = 10  # people who leave the risk set together before the curve may step


def _rounded_survival_table(
    survival_table: pd.DataFrame,
    num_at_risk_col: str = "num at risk",
    num_events_col: str = "num events",
    group: int = SURVIVAL_GROUP,
) -> pd.DataFrame:
    """Add ``rounded_survival_fun``: the Kaplan-Meier curve stepping only once at least ``group`` people have
    left the risk set (events or censoring) since its last step, so no step reveals one person's time."""
    at_risk = survival_table[num_at_risk_col].to_numpy(dtype=float)
    events = survival_table[num_events_col].to_numpy(dtype=float)
    curve = np.ones(len(at_risk))
    held_events = 0.0
    held_since = at_risk[0] if len(at_risk) else 0.0
    value = 1.0
    for i in range(len(at_risk)):
        held_events += events[i]
        left = held_since - (at_risk[i + 1] if i + 1 < len(at_risk) else 0.0)
        if left >= group and held_since > 0:
            value *= 1.0 - held_events / held_since
            held_events = 0.0
            held_since = at_risk[i + 1] if i + 1 < len(at_risk) else 0.0
        curve[i] = value
    out = survival_table.copy()
    out["rounded_survival_fun"] = np.clip(curve, 0.0, 1.0)
    return out
