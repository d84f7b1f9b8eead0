"""The chart values deny egress and carry the same roles as the one-machine hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter.hub_config import CONTROL_PLANE_SCOPES, RESEARCHER_SCOPES

yaml = pytest.importorskip("yaml")
VALUES = yaml.safe_load((Path(__file__).resolve().parents[2] / "infra/jupyterhub/values.yaml").read_text())


def test_researcher_and_control_plane_roles_match_the_local_hub():
    roles = VALUES["hub"]["loadRoles"]

    assert roles["user"]["scopes"] == RESEARCHER_SCOPES
    assert roles["tre-control-plane"]["scopes"] == CONTROL_PLANE_SCOPES
    assert not any(
        scope.startswith(("tokens", "users:shares", "shares")) for scope in roles["user"]["scopes"]
    )


def test_workspace_egress_allowances_are_all_off():
    policy = VALUES["singleuser"]["networkPolicy"]

    assert policy["enabled"] is True
    assert set(policy["egressAllowRules"].values()) == {False}
    assert [rule["ports"] for rule in policy["egress"]] == [[{"port": 5000, "protocol": "TCP"}]]


def test_per_project_volumes_limits_and_culler():
    single = VALUES["singleuser"]

    assert "{user_server}" in single["storage"]["dynamic"]["pvcNameTemplate"]
    assert single["cpu"]["limit"] and single["memory"]["limit"]
    assert VALUES["cull"]["enabled"] is True
    assert VALUES["hub"]["allowNamedServers"] is True


def _keys(node: object) -> list[str]:
    """Every mapping key anywhere in the values, however deeply nested."""
    if isinstance(node, dict):
        return [*node, *(key for value in node.values() for key in _keys(value))]
    if isinstance(node, list):
        return [key for item in node for key in _keys(item)]
    return []


def test_no_value_anywhere_mounts_a_path_of_the_node():
    assert "hostPath" not in _keys(VALUES)
    assert not any(key.lower().startswith("host") and key != "homeMountPath" for key in _keys(VALUES["singleuser"]))


def test_workspaces_run_unprivileged_without_a_service_account():
    single = VALUES["singleuser"]

    assert isinstance(single["uid"], int) and single["uid"] > 0
    assert single["allowPrivilegeEscalation"] is False
    assert not single.get("serviceAccountName")
    assert not single.get("extraPodConfig", {}).get("automountServiceAccountToken")
    assert "privileged" not in _keys(single)
