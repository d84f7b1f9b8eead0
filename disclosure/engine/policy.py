"""Disclosure-control policy as data.

The TRE, not the researcher, chooses the thresholds. A policy is loaded from a versioned TOML file and
identified by the sha256 of its exact bytes, which every verdict records (a record of every criterion
applied to each output: our addition to SATRE's documented process, 3.3.03).
"""

from __future__ import annotations

import copy
import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_POLICY_PATH = Path(__file__).resolve().parent.parent / "policies" / "default-v1.toml"

_ZERO_CHOICES = {"disclosive", "review", "structural"}
_FLAG_CHOICES = {"fail", "review", "ignore"}


class PolicyError(ValueError):
    """The policy file is malformed or holds a value outside its allowed range."""


@dataclass(frozen=True)
class Policy:
    """An immutable, hashed set of disclosure-control parameters."""

    name: str
    version: str
    sha256: str
    settings: dict[str, Any] = field(repr=False)

    def get(self, section: str, key: str) -> Any:
        """Return one parameter; a missing key is a policy bug, so it raises."""
        try:
            return self.settings[section][key]
        except KeyError as exc:
            raise PolicyError(f"policy {self.name} has no [{section}] {key}") from exc

    def section(self, section: str) -> dict[str, Any]:
        """Return a copy of one section, so callers cannot mutate the hashed policy."""
        return copy.deepcopy(self.settings.get(section, {}))

    def identity(self) -> dict[str, str]:
        """The three fields a verdict carries to name the policy it was judged under."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    def with_overrides(self, overrides: dict[str, dict[str, Any]]) -> Policy:
        """Return a derived policy (for tests and what-if analyses); its hash covers the overrides."""
        merged = copy.deepcopy(self.settings)
        for section, values in overrides.items():
            merged.setdefault(section, {}).update(values)
        text = _canonical(merged)
        return _validated(
            Policy(
                name=self.name,
                version=f"{self.version}+override",
                sha256=hashlib.sha256(text.encode()).hexdigest(),
                settings=merged,
            )
        )


def _canonical(settings: dict[str, Any]) -> str:
    import json

    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file; the default is the TRE's shipped policy."""
    raw = Path(path or DEFAULT_POLICY_PATH).read_bytes()
    return policy_from_bytes(raw)


def policy_from_bytes(raw: bytes) -> Policy:
    """Parse policy TOML bytes; the hash is over the bytes so it matches `sha256sum` of the file."""
    try:
        settings = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"policy is not valid TOML: {exc}") from exc
    name = settings.pop("name", None)
    version = settings.pop("version", None)
    if not name or not version:
        raise PolicyError("policy needs a name and a version")
    return _validated(
        Policy(name=str(name), version=str(version), sha256=hashlib.sha256(raw).hexdigest(), settings=settings)
    )


def _validated(policy: Policy) -> Policy:
    """Reject values that would silently weaken protection (e.g. a threshold of 0)."""
    for section in (
        "frequency",
        "magnitude",
        "quantile",
        "dispersion",
        "mode",
        "histogram",
        "survival",
        "differencing",
    ):
        threshold = policy.get(section, "threshold")
        if not isinstance(threshold, int) or threshold < 1:
            raise PolicyError(f"[{section}] threshold must be a positive integer")
    if policy.get("frequency", "zeros") not in _ZERO_CHOICES:
        raise PolicyError(f"[frequency] zeros must be one of {sorted(_ZERO_CHOICES)}")
    if policy.get("frequency", "class_disclosure") not in _FLAG_CHOICES:
        raise PolicyError(f"[frequency] class_disclosure must be one of {sorted(_FLAG_CHOICES)}")
    n, k, p = (
        policy.get("magnitude", "nk_n"),
        policy.get("magnitude", "nk_k"),
        policy.get("magnitude", "p_percent"),
    )
    if not (isinstance(n, int) and n >= 1 and 0 < k <= 1 and 0 <= p < 1):
        raise PolicyError("[magnitude] needs nk_n >= 1, 0 < nk_k <= 1 and 0 <= p_percent < 1")
    if policy.get("extremes", "table_status") not in ("fail", "review"):
        raise PolicyError("[extremes] table_status must be 'fail' or 'review': an extreme never passes")
    if policy.get("dispersion", "min_dof") < 1:
        raise PolicyError("[dispersion] min_dof must be positive")
    if policy.get("regression", "min_dof") < 1:
        raise PolicyError("[regression] min_dof must be positive")
    base = policy.get("rounding", "base")
    if not isinstance(base, int) or base < 1:
        raise PolicyError("[rounding] base must be a positive integer")
    return policy


_DEFAULT: Policy | None = None


def default_policy() -> Policy:
    """The shipped policy, loaded once (it is immutable)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_policy()
    return _DEFAULT
