"""The same gate and project binding on Kubernetes (KubeSpawner 7.1, the Zero-to-JupyterHub chart).

Imported only when configured (``c.JupyterHub.spawner_class = "jupyter.kubespawner.TreKubeSpawner"``),
so the one-machine hub does not need the Kubernetes client. On Kubernetes the isolation the local
spawner builds by hand comes from the platform: a pod per workspace running as a non-root uid, the
extract mounted read-only from the extracts volume (sub-path of the project only), the outputs from a
per-workspace sub-path, and the chart's NetworkPolicy denying egress (infra/jupyterhub/values.yaml).

Whatever the chart's values say, every pod this spawner makes is hardened last (``harden_pod``): no
host path, host network, PID or IPC; no service-account token; a read-only root file system with a
private ``/tmp``; a non-root uid; no privilege escalation and every capability dropped
(docs/adr/0006-private-files.md). A configuration that asks for a host path is refused, not fixed.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

from traitlets import Dict, Unicode

from jupyter.controlplane import SpawnGrant, WorkspaceRefused
from jupyter.spawner import STATE_KEY, TreSpawnerMixin

try:
    from kubespawner import KubeSpawner
except ImportError as error:  # pragma: no cover - exercised only where kubespawner is absent
    raise ImportError(
        "jupyter.kubespawner needs jupyterhub-kubespawner (pip install jupyterhub-kubespawner==7.1.0)"
    ) from error


class TreKubeSpawner(TreSpawnerMixin, KubeSpawner):
    """A pod per (user, project), started only when the access gate allows it."""

    extracts_root = Unicode(
        "/srv/tre/extracts",
        help="The path prefix of extract_path in gate answers; maps to the extracts volume.",
    ).tag(config=True)
    extracts_volume = Dict(
        {"persistentVolumeClaim": {"claimName": "tre-extracts", "readOnly": True}},
        help="Volume source holding every project's extract; only the project's sub-path is mounted.",
    ).tag(config=True)
    outputs_root = Unicode(
        "/srv/tre/outputs",
        help="The path prefix of outputs_path in gate answers; maps to the outputs volume.",
    ).tag(config=True)
    outputs_volume = Dict(
        {"persistentVolumeClaim": {"claimName": "tre-outputs"}},
        help="Volume source for workspace outputs; each workspace mounts its own sub-path.",
    ).tag(config=True)
    mount_root = Unicode("/home/jovyan", help="Where extract/ and outputs/ appear in the pod.").tag(
        config=True
    )

    _base_volumes: list[Any] | None = None
    _base_mounts: list[Any] | None = None

    async def get_pod_manifest(self) -> Any:
        return harden_pod(await super().get_pod_manifest())

    async def _start(self) -> Any:
        """KubeSpawner's start() wraps _start() in a future it tracks for progress; the gate goes first."""
        grant = await self.tre_authorise()
        self.tre_apply_grant(grant)
        return await super()._start()

    def tre_apply_grant(self, grant: SpawnGrant) -> None:
        """Mount only this project's extract (read-only) and this workspace's outputs; label the pod."""
        if self._base_volumes is None:
            self._base_volumes = copy.deepcopy(list(self.volumes))
            self._base_mounts = copy.deepcopy(list(self.volume_mounts))
        extract_sub = _relative(grant.extract_path, self.extracts_root)
        outputs_sub = _relative(grant.outputs_path, self.outputs_root)
        self.volumes = [
            *copy.deepcopy(self._base_volumes),
            {"name": "tre-extract", **copy.deepcopy(self.extracts_volume)},
            {"name": "tre-outputs", **copy.deepcopy(self.outputs_volume)},
        ]
        self.volume_mounts = [
            *copy.deepcopy(self._base_mounts or []),
            {
                "name": "tre-extract",
                "mountPath": f"{self.mount_root}/extract",
                "subPath": extract_sub,
                "readOnly": True,
            },
            {"name": "tre-outputs", "mountPath": f"{self.mount_root}/outputs", "subPath": outputs_sub},
        ]
        project_label = re.sub(r"[^a-z0-9-]", "-", grant.project_id.lower())[:63].strip("-")
        self.extra_labels = {
            **self.extra_labels,
            "tre.nhs/project": project_label,
            "tre.nhs/workspace": "true",
        }

    def tre_env(self) -> dict[str, str]:
        env = super().tre_env()
        if env:
            env["TRE_EXTRACT_DIR"] = f"{self.mount_root}/extract"
            env["TRE_OUTPUTS_DIR"] = f"{self.mount_root}/outputs"
        return env

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(self.tre_env())
        return env

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        state[STATE_KEY] = self.tre_state()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.tre_load_state(state.get(STATE_KEY) or {})


TMP_VOLUME = "tre-tmp"
# Bandit B108: the pod's own emptyDir, never the node's /tmp
TMP_MOUNT = "/tmp"  # noqa: S108  # nosec B108


def harden_pod(pod: Any) -> Any:
    """Make the workspace pod (a kubernetes V1Pod) safe whatever the configuration said; refuse one
    that would mount a path of the node or run as root."""
    from kubernetes_asyncio.client import V1EmptyDirVolumeSource, V1Volume, V1VolumeMount

    def as_dict(context: Any) -> dict[str, Any]:
        # KubeSpawner builds security contexts as camelCase dicts; extra_*_config may give models.
        if context is None:
            return {}
        if isinstance(context, dict):
            return dict(context)
        return {
            context.attribute_map[name]: getattr(context, name)
            for name in context.openapi_types
            if getattr(context, name) is not None
        }

    spec = pod.spec
    host_paths = [v.name for v in spec.volumes or [] if v.host_path is not None]
    if host_paths:
        raise WorkspaceRefused(
            f"The workspace pod would mount a path of the node ({', '.join(host_paths)}); refused.", status_code=503
        )
    spec.automount_service_account_token = False
    spec.service_account_name = None
    spec.host_network = spec.host_pid = spec.host_ipc = False
    spec.share_process_namespace = False
    pod_context = as_dict(spec.security_context)
    if pod_context.get("runAsUser") == 0:
        raise WorkspaceRefused("The workspace pod would run as root (uid 0); refused.", status_code=503)
    spec.security_context = {**pod_context, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if not any(v.name == TMP_VOLUME for v in spec.volumes or []):
        spec.volumes = [*(spec.volumes or []), V1Volume(name=TMP_VOLUME, empty_dir=V1EmptyDirVolumeSource())]
    for container in [*(spec.init_containers or []), *spec.containers]:
        context = as_dict(container.security_context)
        if context.get("runAsUser") == 0:
            raise WorkspaceRefused("A workspace container would run as root (uid 0); refused.", status_code=503)
        container.security_context = {
            **context,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = container.volume_mounts or []
        if not any(m.mount_path == TMP_MOUNT for m in mounts):
            container.volume_mounts = [*mounts, V1VolumeMount(name=TMP_VOLUME, mount_path=TMP_MOUNT)]
    return pod


def _relative(path: str, root: str) -> str:
    """The sub-path of ``path`` under ``root``; anything outside the root is refused."""
    relative = os.path.relpath(path, root)
    if relative == "." or relative.startswith(".."):
        raise WorkspaceRefused(f"The access gate named {path!r}, which is outside {root!r}.", status_code=503)
    return relative
