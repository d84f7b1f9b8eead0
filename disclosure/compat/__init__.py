"""Drop-in replacement for ACRO 1.0: ``from disclosure.compat import ACRO``.

Same constructor arguments, method names and records as ``acro.ACRO`` (``acro.results`` is a
:class:`~disclosure.compat.records.Records`, ``finalise()`` returns it); the checks are ours (see
docs/disclosure/acro-differences.md for where they deliberately differ). ACRO's ``config`` named a YAML file
of thresholds chosen by the researcher; here thresholds come from the TRE's policy, so ``config`` is accepted
only for compatibility and ignored unless it is a path to one of our TOML policy files.

Unlike ACRO, tables record their population: read the data with ``acro.read(path)`` or hand it over once with
``df = acro.use(df, "dataset-name")`` and tables made from that frame (filtered as ``disclosure.tracked``
describes) carry the dataset and filters into ``results.json``. A notebook that does neither still runs; its
tables record an unknown population and are reviewed by a person rather than passed.
"""

from __future__ import annotations

import json
import linecache
import logging
import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from disclosure.compat import records as record
from disclosure.compat import utils
from disclosure.compat.plots import ChartsMixin
from disclosure.compat.records import Records
from disclosure.engine.policy import PolicyError, default_policy, load_policy
from disclosure.sacro import acro_config
from disclosure.session import RESULTS_VERSION, Output, Session

__all__ = ["ACRO", "Records", "__version__", "add_constant", "add_to_acro", "record", "utils"]
__version__ = RESULTS_VERSION
logger = logging.getLogger("acro")
logger.setLevel(logging.INFO)  # ACRO talks to the researcher at INFO level
_MITIGATIONS = ("none", "suppress", "round")


class ACRO(ChartsMixin, Session):
    """ACRO-compatible session."""

    acro_summaries = True  # a table's summary is ACRO 1.0.2's text; results.json keeps SACRO-Viewer's

    def __init__(
        self,
        config: str = "default",
        suppress: bool = False,
        mitigation: str | None = None,
        round_base: int | None = None,
        federated: bool | None = None,
        **kwargs: Any,
    ):
        policy = load_policy(config) if config != "default" and Path(config).suffix == ".toml" else default_policy()
        if mitigation not in (None, *_MITIGATIONS):
            mitigation = "none"  # ACRO falls back to no mitigation on an unknown value, and so do we
        super().__init__(policy=policy, suppress=suppress, mitigation=mitigation, round_base=round_base, **kwargs)
        self.results: Records = Records()  # type: ignore[assignment]
        self.federated = bool(federated)
        self.sdc_checks = SDCChecks(self)
        self._federated_evidence: dict[str, dict] = {}

    # --- ACRO's mitigation properties -------------------------------------------------------------------
    @property
    def mitigation(self) -> str:
        return self._mitigation

    @mitigation.setter
    def mitigation(self, value: str) -> None:
        self._mitigation = value if value in _MITIGATIONS else "none"

    @property
    def suppress(self) -> bool:
        return self._mitigation == "suppress"

    @suppress.setter
    def suppress(self, value: bool) -> None:
        if self._mitigation == "round" and not value:
            logger.info("suppress=False has no effect while rounding is on; call disable_rounding()")
            return
        self._mitigation = "suppress" if value else "none"

    @property
    def round_base(self) -> int:
        return int(self.policy.get("rounding", "base"))

    @round_base.setter
    def round_base(self, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            logger.info("round_base must be a positive integer; keeping %s", self.round_base)
            return
        self.policy = self.policy.with_overrides({"rounding": {"base": int(value)}})

    # --- records ---------------------------------------------------------------------------------------
    def _add(self, **kwargs: Any):
        kwargs["command"] = _calling_line(kwargs.get("command", ""))
        if self.federated:
            self._federated_record(kwargs["command"], _analysis_name(kwargs), kwargs["properties"].get("dof"))
            kwargs.pop("acro_summary", None)
            return Output(uid="", **kwargs)
        uid = f"output_{self.results.output_id}"
        self.results.output_id += 1
        out = super()._add_as(uid, **kwargs)
        if out.output_type == "table" and self._mitigation in ("suppress", "round"):
            # ACRO sends every mitigated table to review, saying which mitigation was applied.
            out.exception = (
                "Suppression automatically applied where needed"
                if self._mitigation == "suppress"
                else f"Rounding automatically applied to nearest {self.round_base}"
            )
            out.status = "review" if out.status != "fail" else out.status
        return out

    def _federated_record(self, command: str, analysis: str, dof: Any = None) -> None:
        """Federated mode: the output is not recorded for release; what a federated checker would be told
        about it is kept for evidence.json. Interim tables of raw cell values are not kept: they would carry
        unprotected small cells out of the session."""
        uid = f"output_{self.results.output_id}"
        self.results.output_id += 1
        self._federated_evidence[uid] = {
            "command": command,
            "analysis_names": [analysis],
            "variable_types": {},
            "dof": dof,
            "interim_tables": {},
        }

    def show_fair_summaries(self) -> str:
        """Each output's uid and its FAIR description (ACRO's layout)."""
        text = ""
        for uid, out in self.results.items():
            text += uid + "\n"
            for key, val in out.fair.items():
                if isinstance(val, dict):
                    text += "".join(f"{k} : {v}\n" for k, v in val.items())
                else:
                    text += f"{key}:{val}\n"
        return text + "\n"

    def remove_output(self, key: str) -> None:
        self.results.remove(key)

    def rename_output(self, old: str, new: str) -> None:
        self.results.rename(old, new)

    def add_comments(self, output: str, comment: str) -> None:
        self.results.add_comments(output, comment)

    def add_exception(self, output: str, reason: str) -> None:
        self.results.add_exception(output, reason)

    def custom_output(self, filename: str, comment: str = "") -> bool:
        if os.path.splitext(filename)[1].lower() in self.results.blocked_extensions:
            return False
        return super().custom_output(filename, comment)

    def print_outputs(self) -> str:
        return self.results.print()

    def finalise(self, path: str = "outputs", ext: str = "json", interactive: bool = False) -> Records | None:  # type: ignore[override]
        """Write the outputs and results.json to a new folder ``path``; returns the records."""
        if interactive:
            self.results.validate_outputs()
        if ext not in ("json", "xlsx"):
            raise ValueError("Invalid file extension. Options: {json, xlsx}")
        if os.path.exists(path):
            logger.warning(
                "Results file can not be created. Directory %s already exists. "
                "Please choose a different directory name.",
                path,
            )
            return None
        if self.federated:
            os.makedirs(path)
            evidence = self.results.finalise_evidence(path, self._federated_evidence)
            with open(os.path.join(path, "evidence.json"), "w", encoding="utf-8") as handle:
                json.dump(evidence, handle, indent=4)
            return self.results
        super().finalise(path, "json")
        if ext == "xlsx":
            from disclosure.compat.workbook import write_workbook

            write_workbook(self.results, os.path.join(path, "results.xlsx"))
        return self.results


_MODEL_ANALYSES = {
    "ols": "GeneralLinearModel",
    "olsr": "GeneralLinearModel",
    "logit": "Logit",
    "logitr": "Logit",
    "probit": "Probit",
    "probitr": "Probit",
}


def _analysis_name(output: dict) -> str:
    method = output.get("properties", {}).get("method", "")
    if output.get("output_type") == "regression":
        return _MODEL_ANALYSES.get(method, "GeneralLinearModel")
    return "FrequencyTable" if output.get("output_type") == "table" else str(output.get("output_type"))


def _calling_line(default: str) -> str:
    """The researcher's own source line that made the output (ACRO records it as the command).

    Walks the frames directly: ``inspect.stack()`` resolves every frame's module and source, which cost
    0.6 s per table on a large notebook session."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame = frame.f_back
    if frame is None:
        return default
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno, frame.f_globals).strip()
    return line or default


class SDCChecks:
    """ACRO's ``acro.sdc_checks``: its ``risk_appetite`` shows the policy's thresholds.

    In ACRO the researcher may edit these. Here the thresholds are the TRE's policy, so an edit that would
    loosen a check is kept in the dict (a notebook that sets it still runs) but changes nothing, and is
    logged; an edit that makes a check stricter (a higher threshold, ``check_missing_values=True``) is
    applied to the session's policy, since asking for more protection is always allowed.
    """

    def __init__(self, session: ACRO) -> None:
        self.risk_appetite = _RiskAppetite(acro_config(session.policy), session)


# risk-appetite key -> the policy settings it stands for, and whether a new value is stricter than the old
_TIGHTENABLE: dict[str, tuple[tuple[tuple[str, str], ...], Any]] = {
    "safe_threshold": ((("frequency", "threshold"), ("magnitude", "threshold")), lambda new, old: new > old),
    "safe_dof_threshold": ((("regression", "min_dof"),), lambda new, old: new > old),
    "safe_nk_k": ((("magnitude", "nk_k"),), lambda new, old: new < old),
    "safe_pratio_p": ((("magnitude", "p_percent"),), lambda new, old: new > old),
    "survival_safe_threshold": ((("survival", "threshold"),), lambda new, old: new > old),
}


class _RiskAppetite(dict):
    def __init__(self, values: dict[str, Any], session: ACRO) -> None:
        super().__init__(values)
        self._session = session

    def __setitem__(self, key: str, value: Any) -> None:
        overrides = self._stricter(key, value)
        if overrides:
            try:
                self._session.policy = self._session.policy.with_overrides(overrides)
            except PolicyError:
                logger.warning("risk appetite %r=%r is not a valid setting; no check changed", key, value)
                return
            logger.info("risk appetite %r set to %r: a stricter check, applied", key, value)
        else:
            logger.warning("risk appetite %r comes from the TRE's policy; setting it changes no check", key)
        super().__setitem__(key, value)

    def _stricter(self, key: str, value: Any) -> dict[str, dict[str, Any]]:
        """The policy overrides that apply ``value``, if it tightens a check; else nothing."""
        policy = self._session.policy
        if key == "check_missing_values":
            return (
                {"magnitude": {"missing": "review"}}
                if value is True and policy.get("magnitude", "missing") == "ignore"
                else {}
            )
        if key == "zeros_are_disclosive":
            return (
                {"frequency": {"zeros": "disclosive"}}
                if value is True and policy.get("frequency", "zeros") != "disclosive"
                else {}
            )
        if key not in _TIGHTENABLE or isinstance(value, bool) or not isinstance(value, int | float):
            return {}
        settings, stricter = _TIGHTENABLE[key]
        overrides: dict[str, dict[str, Any]] = {}
        for section, option in settings:
            if stricter(value, policy.get(section, option)):
                overrides.setdefault(section, {})[option] = value
        return overrides


def add_constant(data: Any, prepend: bool = True, has_constant: str = "skip") -> Any:
    """statsmodels' ``add_constant`` (ACRO re-exports it)."""
    import statsmodels.api as sm

    return sm.add_constant(data, prepend=prepend, has_constant=has_constant)


def add_to_acro(src_path: str, dest_path: str = "sdc_results") -> None:
    """Gather files made outside a session into a results folder: each file is a custom output for review."""
    session = ACRO(suppress=False)
    for name in sorted(os.listdir(src_path)):
        session.custom_output(os.path.join(src_path, name), "added with add_to_acro")
    session.finalise(dest_path, "json", interactive=True)
