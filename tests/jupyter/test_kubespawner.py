"""The Kubernetes spawner asks the same gate and mounts only the project's extract, read-only."""

from __future__ import annotations

import asyncio
import types

import pytest

from jupyter.controlplane import SpawnGrant, WorkspaceRefused

pytest.importorskip("kubespawner")

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
        return action(spawner)

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
