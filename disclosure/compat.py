"""Drop-in replacement for ACRO 1.0: ``from disclosure.compat import ACRO``.

Same constructor arguments and method names as ``acro.ACRO``; the checks are ours (see
docs/disclosure/acro-differences.md for where they deliberately differ). ACRO's ``config`` named a YAML file
of thresholds chosen by the researcher; here thresholds come from the TRE's policy, so ``config`` is accepted
only for compatibility and ignored unless it is a path to one of our TOML policy files.

Unlike ACRO, tables record their population: read the data with ``acro.read(path)`` or hand it over once with
``df = acro.use(df, "dataset-name")`` and tables made from that frame (filtered as ``disclosure.tracked``
describes) carry the dataset and filters into ``results.json``. A notebook that does neither still runs; its
tables record an unknown population and are reviewed by a person rather than passed.
"""

from __future__ import annotations

from pathlib import Path

from disclosure.engine.policy import default_policy, load_policy
from disclosure.session import Session


class ACRO(Session):
    """ACRO-compatible session."""

    def __init__(
        self,
        config: str = "default",
        suppress: bool = False,
        mitigation: str | None = None,
        round_base: int | None = None,
        federated: bool | None = None,
        **kwargs,
    ):
        policy = load_policy(config) if config != "default" and Path(config).suffix == ".toml" else default_policy()
        if mitigation not in (None, "none", "suppress", "round"):
            mitigation = "none"  # ACRO falls back to no mitigation on an unknown value, and so do we
        super().__init__(policy=policy, suppress=suppress, mitigation=mitigation, round_base=round_base, **kwargs)
