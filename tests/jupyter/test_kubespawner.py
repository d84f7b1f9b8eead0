"""The Kubernetes spawner asks the same gate and mounts only the project's extract, read-only."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path
from typing import Any

import pytest

from jupyter.controlplane import SpawnGrant, WorkspaceRefused

pytest.importorskip("kubespawner")
yaml = pytest.importorskip("yaml")

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: t, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: t, user: {token: t}}]
contexts: [{name: t, context: {cluster: t, user: t, namespace: tre}}]
current-context: t
"""


def run_with_spawner(tmp_path, monkeypatch, action):
    """Build a TreKubeSpawner against a kubeconfig that points nowhere (nothing is sent)."""
    from kubernetes_asyncio.config import kube_config

    from jupyter.kubespawner import TreKubeSpawner

    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))

    async def body():
        spawner = TreKubeSpawner(
            user=types.SimpleNamespace(name="u-1", url="/user/u-1/", id=1, escaped_name="u-1"),
            orm_spawner=types.SimpleNamespace(name="proj1", server=None),
            _mock=True,
        )
        result = action(spawner)
        return await result if asyncio.iscoroutine(result) else result

    return asyncio.run(body())


def grant(extract: str = "/srv/tre/extracts/proj1/v3") -> SpawnGrant:
    return SpawnGrant("PROJ1", extract, "/srv/tre/outputs/u-1-proj1", "x", {"TRE_OUTPUT_TOKEN": "t"})


def test_only_the_projects_extract_is_mounted_read_only(tmp_path, monkeypatch):
    def action(spawner):
        spawner.tre_grant = grant()
        spawner.tre_apply_grant(grant())
        spawner.tre_apply_grant(grant())  # a second start must not stack mounts
        return spawner.volume_mounts, spawner.extra_labels, spawner.tre_env()

    mounts, labels, env = run_with_spawner(tmp_path, monkeypatch, action)

    assert mounts == [
        {"name": "tre-extract", "mountPath": "/home/jovyan/extract", "subPath": "proj1/v3", "readOnly": True},
        {"name": "tre-outputs", "mountPath": "/home/jovyan/outputs", "subPath": "u-1-proj1"},
    ]
    assert labels["tre.nhs/project"] == "proj1"
    assert env["TRE_EXTRACT_DIR"] == "/home/jovyan/extract"


def test_extract_outside_the_extracts_root_is_refused(tmp_path, monkeypatch):
    with pytest.raises(WorkspaceRefused, match="outside"):
        run_with_spawner(tmp_path, monkeypatch, lambda spawner: spawner.tre_apply_grant(grant("/etc/shadow")))


def test_state_keeps_the_project_binding(tmp_path, monkeypatch):
    def action(spawner):
        spawner.load_state({"tre": {"bound_server": "proj1"}})
        return spawner.get_state()["tre"]

    assert run_with_spawner(tmp_path, monkeypatch, action) == {"bound_server": "proj1"}


# --- the rendered pod, walked ---------------------------------------------------------------------
# As the real-hub tests walk a workspace's file system, these walk the pod the hub would send to the
# cluster (offline: nothing is sent), configured as the chart configures it from our values.

VALUES_FILE = Path(__file__).resolve().parents[2] / "infra/jupyterhub/values.yaml"
HOME = "/home/jovyan"


def chart_config(values: dict[str, Any]) -> dict[str, Any]:
    """The KubeSpawner settings Zero-to-JupyterHub derives from the ``singleuser`` values we set."""
    single = values["singleuser"]
    storage = single["storage"]
    home = storage["dynamic"]["volumeNameTemplate"]
    return {
        "cmd": [single["cmd"]],
        "uid": single["uid"],
        "fs_gid": single["fsGid"],
        "allow_privilege_escalation": single["allowPrivilegeEscalation"],
        "service_account": single.get("serviceAccountName"),
        "volumes": [
            {"name": home, "persistentVolumeClaim": {"claimName": storage["dynamic"]["pvcNameTemplate"]}},
            *storage.get("extraVolumes", []),
        ],
        "volume_mounts": [{"name": home, "mountPath": storage["homeMountPath"]}, *storage.get("extraVolumeMounts", [])],
    }


def render_pod(tmp_path, monkeypatch, the_grant: SpawnGrant, **overrides: Any) -> dict[str, Any]:
    """The pod manifest the hub would create for ``the_grant``, as the JSON the API server receives."""
    from kubernetes_asyncio.client import ApiClient

    config = {**chart_config(yaml.safe_load(VALUES_FILE.read_text())), **overrides}

    async def action(spawner):
        for name, value in config.items():
            setattr(spawner, name, value)
        spawner.tre_grant = the_grant
        spawner.tre_apply_grant(the_grant)
        pod = await spawner.get_pod_manifest()
        async with ApiClient() as api:
            return api.sanitize_for_serialization(pod)

    return run_with_spawner(tmp_path, monkeypatch, action)


def volume_kinds(pod: dict[str, Any]) -> dict[str, set[str]]:
    return {v["name"]: set(v) - {"name"} for v in pod["spec"]["volumes"]}


def test_the_pod_has_only_home_its_projects_extract_read_only_outputs_and_tmp(tmp_path, monkeypatch):
    pod = render_pod(tmp_path, monkeypatch, grant("/srv/tre/extracts/proj1"))
    (container,) = pod["spec"]["containers"]

    assert volume_kinds(pod) == {
        "tre-home-u-1--proj1": {"persistentVolumeClaim"},
        "tre-extract": {"persistentVolumeClaim"},
        "tre-outputs": {"persistentVolumeClaim"},
        "tre-tmp": {"emptyDir"},
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {HOME, f"{HOME}/extract", f"{HOME}/outputs", "/tmp"}
    assert mounts[f"{HOME}/extract"] == {
        "name": "tre-extract", "mountPath": f"{HOME}/extract", "subPath": "proj1", "readOnly": True,
    }
    assert [m["mountPath"] for m in mounts.values() if m.get("readOnly")] == [f"{HOME}/extract"]
    extract = next(v for v in pod["spec"]["volumes"] if v["name"] == "tre-extract")
    assert extract["persistentVolumeClaim"]["readOnly"] is True


def test_another_projects_workspace_mounts_that_projects_extract_only(tmp_path, monkeypatch):
    other = SpawnGrant("PROJ2", "/srv/tre/extracts/proj2", "/srv/tre/outputs/u-1-proj2", "x", {})

    pod = render_pod(tmp_path, monkeypatch, other)

    subpaths = {m["mountPath"]: m.get("subPath") for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert subpaths == {HOME: None, f"{HOME}/extract": "proj2", f"{HOME}/outputs": "u-1-proj2", "/tmp": None}


def test_the_pod_has_no_token_no_host_access_and_a_locked_down_container(tmp_path, monkeypatch):
    pod = render_pod(tmp_path, monkeypatch, grant("/srv/tre/extracts/proj1"))
    spec = pod["spec"]
    (container,) = spec["containers"]

    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec and "serviceAccount" not in spec
    assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "runAsUser": 1000,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert not spec.get("initContainers")


def test_the_rendered_pod_is_a_valid_kubernetes_pod(tmp_path, monkeypatch):
    validator = pytest.importorskip("kubernetes_validate")
    pod = render_pod(tmp_path, monkeypatch, grant("/srv/tre/extracts/proj1"))

    validator.validate(pod, "1.30.0", strict=True)


def test_a_configured_host_path_volume_is_refused_not_mounted(tmp_path, monkeypatch):
    # A careless values file (or a compromised config map) adds the node's file system.
    values = chart_config(yaml.safe_load(VALUES_FILE.read_text()))
    volumes = [*values["volumes"], {"name": "node", "hostPath": {"path": "/"}}]
    mounts = [*values["volume_mounts"], {"name": "node", "mountPath": "/node"}]

    with pytest.raises(WorkspaceRefused, match="path of the node"):
        render_pod(tmp_path, monkeypatch, grant("/srv/tre/extracts/proj1"), volumes=volumes, volume_mounts=mounts)


def test_a_configured_service_account_gets_no_token_in_the_pod(tmp_path, monkeypatch):
    pod = render_pod(tmp_path, monkeypatch, grant("/srv/tre/extracts/proj1"), service_account="tre",
                     automount_service_account_token=True)

    assert pod["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod["spec"]


def test_root_or_privileges_asked_for_in_configuration_are_refused_or_overridden(tmp_path, monkeypatch):
    with pytest.raises(WorkspaceRefused, match="root"):
        render_pod(tmp_path, monkeypatch, grant("/srv/tre/extracts/proj1"), uid=0)

    pod = render_pod(tmp_path, monkeypatch, grant("/srv/tre/extracts/proj1"), privileged=True,
                     allow_privilege_escalation=True,
                     container_security_context={"capabilities": {"add": ["SYS_ADMIN"]}})
    context = pod["spec"]["containers"][0]["securityContext"]
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsNonRoot"] is True
