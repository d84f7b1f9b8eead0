"""Run a re-run as a Kubernetes Job (TRE_RERUN_LAUNCHER=kubernetes; ADR 0029), with the local sandbox's
guarantees (ADR 0018).

``python -m jupyter.rerun_kubernetes`` takes the same JSON plan as ``python -m jupyter.rerun`` (plus
``kubernetes``: namespace, image, the worker's mount of the re-run work volume, claim names) and gives
the same answer, so the output queue's job does not care which ran it. One source of truth: the Job is
``infra/production/kubernetes/rerun/job-template.yaml`` filled in after parsing (a value can never add
YAML), with the local sandbox's environment (``jupyter.rerun._environment``); the network policy is the
``rerun-deny-all`` of ``infra/production/kubernetes/networkpolicies.yaml``. Before each launch the
launcher checks the filled Job against the guarantees (``guarantees``: egress and ingress denied by the
policy the cluster actually holds, limits set, no service-account token, non-root, read-only root...) and
launches nothing if one is missing. Then it waits for the Job, reads what the pod's second container
wrote (``jupyter.rerun_driver job-collect``: the report, the re-made files, the images' digests) from the
re-run's folder of the shared work volume, and deletes the Job.

The pod runs the code in an init container (``job-run``: prlimit's CPU, address-space and file-size
limits, as locally) and collects in a second container that starts only after the first has ended, so
nothing the code started is alive when its files are collected or its images decoded (locally: a second
sandbox). Not run on a real cluster here: the manifests are checked against the Kubernetes schema and
the guarantees, and the control flow against a fake API server (tests/jupyter/test_rerun_kubernetes.py).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter.rerun import Limits, RerunError, _environment, extract_changed, log_lines, outcome, split_prints
from jupyter.rerun_driver import POD_HOME, POD_IN

KUBERNETES = Path(__file__).resolve().parents[1] / "infra" / "production" / "kubernetes"
TEMPLATE = KUBERNETES / "rerun" / "job-template.yaml"
POLICIES = KUBERNETES / "networkpolicies.yaml"
POLICY_NAME = "rerun-deny-all"
RUNTIME = "/opt/tre-workspace"  # the workspace image's runtime
EXTRACT = "/extract"  # where the pod sees the project's extract
CONTROL_PLANE_LABEL = ("app.kubernetes.io/name", "tre-control-plane")
_FIELD = re.compile(r"\$\{([A-Z_]+)\}")
_ID = re.compile(r"^[0-9a-f]{1,40}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_. -]{0,99}$")


@dataclass(frozen=True)
class ClusterSettings:
    namespace: str = "tre"
    image: str = "registry.example.nhs.uk/tre/workspace"
    work_dir: str = "/var/lib/tre/rerun-work"  # the worker's mount of the work claim
    work_claim: str = "tre-rerun-work"
    extracts_claim: str = "tre-extracts"
    start_seconds: int = 300  # for the pod to be scheduled and its image pulled, beyond the wall time
    poll_seconds: float = 2.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSettings:
        return cls(**{k: type(getattr(cls, k))(v) for k, v in data.items() if k in cls.__dataclass_fields__})


def fill(node: Any, values: dict[str, Any]) -> Any:
    """The parsed template with each ``${NAME}`` replaced: a whole-field placeholder by the value itself
    (an int stays an int), one inside a string by its text. Parsed first, so no value can add YAML."""
    if isinstance(node, dict):
        return {key: fill(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [fill(value, values) for value in node]
    if isinstance(node, str):
        try:
            whole = _FIELD.fullmatch(node)
            if whole:
                return values[whole.group(1)]
            return _FIELD.sub(lambda m: str(values[m.group(1)]), node)
        except KeyError as missing:
            raise RerunError(f"the re-run Job template has a field with no value: {missing}") from None
    return node


def deny_all_policy(path: Path = POLICIES) -> dict[str, Any]:
    """The rerun-deny-all NetworkPolicy as the repository states it."""
    import yaml

    with path.open(encoding="utf-8") as handle:
        for document in yaml.safe_load_all(handle):
            if document and document.get("kind") == "NetworkPolicy" and document["metadata"]["name"] == POLICY_NAME:
                return dict(document)
    raise RerunError(f"{path} holds no {POLICY_NAME} NetworkPolicy")


def build_job(plan: dict[str, Any], cluster: ClusterSettings, template: Path = TEMPLATE) -> dict[str, Any]:
    """The Job of one re-run: the template filled in from the plan and the settings."""
    import yaml

    limits = Limits.from_dict(plan.get("limits", {}))
    rerun_id, project_id, code_path = str(plan["rerun_id"]), str(plan["project_id"]), str(plan["code_path"])
    if not _ID.match(rerun_id) or not _ID.match(project_id):
        raise RerunError("a re-run's and a project's ids must be lowercase hexadecimal")
    if code_path.startswith("/") or not all(_PATH_PART.match(part) for part in code_path.split("/")):
        raise RerunError("the code's path must be relative to the home, without '..'")
    if plan["kind"] not in ("notebook", "script"):
        raise RerunError("the code must be a notebook or a script")
    mb = 1024 * 1024
    values = {
        "RERUN_ID": rerun_id,
        "PROJECT_ID": project_id,
        "CODE_KIND": plan["kind"],
        "CODE_PATH": code_path,
        "IMAGE": cluster.image,
        "WALL_SECONDS": limits.wall_seconds,
        "CPU_SECONDS": limits.cpu_seconds,
        "MEMORY_BYTES": limits.memory_bytes,
        "MEMORY_MB": max(1, limits.memory_bytes // mb),
        "DISK_BYTES": limits.disk_bytes,
        "DISK_MB": max(1, limits.disk_bytes // mb),
        "EXTRACTS_CLAIM": cluster.extracts_claim,
        "WORK_CLAIM": cluster.work_claim,
    }
    job = fill(yaml.safe_load(template.read_text(encoding="utf-8")), values)
    env = _environment(RUNTIME, EXTRACT) | {"EXTRACT_VERSION": str(plan.get("extract_version") or "")}
    pod = job["spec"]["template"]["spec"]
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        container["env"] = [{"name": name, "value": value} for name, value in sorted(env.items())]
    return dict(job)


def guarantees(job: dict[str, Any], policy: dict[str, Any], limits: Limits) -> list[str]:
    """What the Job (with ``policy``, the one the cluster holds) fails to guarantee: empty when it keeps
    every promise of the local sandbox that a manifest can make."""
    problems: list[str] = []
    spec = job.get("spec", {})
    pod_template = spec.get("template", {})
    pod, labels = pod_template.get("spec", {}), pod_template.get("metadata", {}).get("labels", {})
    policy_spec = policy.get("spec", {})
    selector = policy_spec.get("podSelector", {})
    if set(selector) - {"matchLabels"} or not selector.get("matchLabels"):
        problems.append("the network policy must select re-run pods by labels alone")
    elif not selector["matchLabels"].items() <= labels.items():
        problems.append("the network policy does not select the re-run pod")
    if set(policy_spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
        problems.append("the network policy must govern both ingress and egress")
    if policy_spec.get("egress") or policy_spec.get("ingress"):
        problems.append("the network policy allows traffic: a re-run may have none")
    if labels.get(CONTROL_PLANE_LABEL[0]) == CONTROL_PLANE_LABEL[1]:
        problems.append("the re-run pod carries the control plane's label, which other policies allow")
    if spec.get("backoffLimit") != 0:
        problems.append("a failed re-run must not be retried (backoffLimit 0)")
    if spec.get("activeDeadlineSeconds") != limits.wall_seconds:
        problems.append("activeDeadlineSeconds must be the wall-time limit")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("the pod must not mount a service-account token")
    if pod.get("enableServiceLinks") is not False:
        problems.append("the pod must not get service links")
    if any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")):
        problems.append("the pod must not share a host namespace")
    if pod.get("dnsPolicy") != "None":
        problems.append("the pod must have no cluster DNS")
    pod_security = pod.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True or pod_security.get("runAsUser") in (None, 0):
        problems.append("the pod must run as a non-root user")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if any(set(v) - {"name", "emptyDir", "persistentVolumeClaim"} for v in volumes.values()):
        problems.append("the pod may have only emptyDir and claimed volumes (no host paths, secrets...)")
    writable = {"home", "tmp", "work:out"}
    memory = f"{max(1, limits.memory_bytes // (1024 * 1024))}Mi"
    containers = [*pod.get("initContainers", []), *pod.get("containers", [])]
    if not containers:
        problems.append("the pod has no container")
    for container in containers:
        name = container.get("name", "?")
        security = container.get("securityContext", {})
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: the root file system must be read-only")
        if security.get("allowPrivilegeEscalation") is not False or security.get("privileged"):
            problems.append(f"{name}: no privilege and no escalation")
        if security.get("capabilities", {}).get("drop") != ["ALL"] or security.get("capabilities", {}).get("add"):
            problems.append(f"{name}: every capability must be dropped")
        if security.get("runAsUser") == 0 or security.get("runAsNonRoot") is False:
            problems.append(f"{name}: must not run as root")
        resources = container.get("resources", {}).get("limits", {})
        if not {"cpu", "memory", "ephemeral-storage"} <= resources.keys():
            problems.append(f"{name}: CPU, memory and disk limits must be set")
        elif resources["memory"] != memory:
            problems.append(f"{name}: the memory limit must be the re-run's ({memory})")
        for mount in container.get("volumeMounts", []):
            key = mount["name"] + (":out" if mount.get("mountPath", "").endswith("/out") else "")
            volume = volumes.get(mount["name"], {})
            if mount["name"] == "extract" and not (
                mount.get("readOnly") and volume.get("persistentVolumeClaim", {}).get("readOnly")
            ):
                problems.append(f"{name}: the extract must be read-only")
            if not mount.get("readOnly") and key not in writable and mount["name"] not in writable:
                problems.append(f"{name}: {mount.get('mountPath')} must be read-only")
    return problems


class Launcher:
    """Create the Job, wait for it, collect what it made, delete it. The API objects are the
    ``kubernetes`` client's (``BatchV1Api``, ``CoreV1Api``, ``NetworkingV1Api``); ``sleep`` and ``clock``
    are the real ones but for tests."""

    def __init__(
        self,
        cluster: ClusterSettings,
        batch: Any,
        core: Any,
        networking: Any,
        *,
        template: Path = TEMPLATE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster, self.batch, self.core, self.networking = cluster, batch, core, networking
        self.template, self.sleep, self.clock = template, sleep, clock

    def __call__(self, plan: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        limits = Limits.from_dict(plan.get("limits", {}))
        changed = extract_changed(plan)
        if changed is not None:
            return changed
        job = build_job(plan, self.cluster, self.template)
        try:
            held = self.networking.read_namespaced_network_policy(POLICY_NAME, self.cluster.namespace)
        except ApiException as error:
            if error.status == 404:
                raise RerunError(f"the namespace has no {POLICY_NAME} NetworkPolicy: not launched") from None
            raise RerunError(f"the {POLICY_NAME} NetworkPolicy could not be read (HTTP {error.status})") from None
        policy = self.batch.api_client.sanitize_for_serialization(held)
        problems = guarantees(job, policy, limits)
        if problems:
            raise RerunError("not launched, the Job would break its guarantees: " + "; ".join(problems))
        name, folder = job["metadata"]["name"], Path(self.cluster.work_dir) / str(plan["rerun_id"])
        self._prepare(plan, folder)
        started = self.clock()
        try:
            self._create(job)
            state, reason = self._wait(name, limits)
            return self._answer(plan, folder, state, reason, limits, self.clock() - started)
        finally:
            self._delete(name)
            shutil.rmtree(folder, ignore_errors=True)

    def _prepare(self, plan: dict[str, Any], folder: Path) -> None:
        """The re-run's folder of the work volume: in/ (the code, the submitted images), out/ (for the pod)."""
        shutil.rmtree(folder, ignore_errors=True)  # a killed attempt's leftovers: never trusted
        submitted = folder / "in" / "submitted"
        submitted.mkdir(parents=True)
        shutil.copyfile(plan["code_file"], folder / "in" / "code")
        for image in sorted((Path(plan["work"]) / "submitted").glob("*")):
            if image.is_file() and not image.is_symlink():
                shutil.copyfile(image, submitted / image.name)
        (folder / "out").mkdir()
        for path in (folder, folder / "in", submitted):
            path.chmod(0o755)
        for path in [folder / "in" / "code", *submitted.iterdir()]:
            path.chmod(0o644)
        (folder / "out").chmod(0o777)  # the pod's user (65534) writes there; nothing else is shared  # nosec B103

    def _create(self, job: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace = self.cluster.namespace
        try:
            self.batch.create_namespaced_job(namespace, job)
            return
        except ApiException as error:
            if error.status != 409:
                raise RerunError(f"the Job could not be created (HTTP {error.status})") from None
        # A killed worker's attempt left its Job: take it away and start afresh.
        self._delete(job["metadata"]["name"])
        deadline = self.clock() + self.cluster.start_seconds
        while self.clock() < deadline:
            try:
                self.batch.read_namespaced_job_status(job["metadata"]["name"], namespace)
            except ApiException as error:
                if error.status == 404:
                    break
                raise
            self.sleep(self.cluster.poll_seconds)
        else:
            raise RerunError("an earlier attempt's Job would not go away")
        self.batch.create_namespaced_job(namespace, job)

    def _wait(self, name: str, limits: Limits) -> tuple[str, str]:
        """("succeeded", "") or ("failed", the Job's or the pod's reason) or ("timed_out", "")."""
        deadline = self.clock() + limits.wall_seconds + self.cluster.start_seconds
        while True:
            job = self.batch.read_namespaced_job_status(name, self.cluster.namespace)
            status = job.status
            if status is not None and (status.succeeded or 0) > 0:
                return "succeeded", ""
            failed = (
                [c for c in (status.conditions or []) if c.type == "Failed" and c.status == "True"] if status else []
            )
            if failed or (status is not None and (status.failed or 0) > 0):
                reason = failed[0].reason if failed else ""
                if reason == "DeadlineExceeded":
                    return "timed_out", ""
                return "failed", self._pod_reason(name) or reason or "the re-run pod failed"
            if self.clock() > deadline:
                return "timed_out", ""
            self.sleep(self.cluster.poll_seconds)

    def _pod_reason(self, name: str) -> str:
        pods = self.core.list_namespaced_pod(self.cluster.namespace, label_selector=f"job-name={name}")
        for pod in pods.items:
            statuses = [*(pod.status.init_container_statuses or []), *(pod.status.container_statuses or [])]
            for container in statuses:
                terminated = container.state.terminated if container.state else None
                if terminated is not None and terminated.reason == "OOMKilled":
                    return "OOMKilled"
            if pod.status.reason == "Evicted":
                return "Evicted"
        return ""

    def _answer(
        self, plan: dict[str, Any], folder: Path, state: str, reason: str, limits: Limits, seconds: float
    ) -> dict[str, Any]:
        kind, timings = plan["kind"], {"code_seconds": seconds}
        if state != "succeeded":
            status: dict[str, Any] = {"status": "failed"}
            if reason == "OOMKilled":
                status["error"] = "MemoryError"
            elif reason == "Evicted":
                status["errno"] = "ENOSPC"  # the kubelet evicts a pod whose emptyDir passes its size limit
            timed_out = state == "timed_out"
            returncode = 1
            why = outcome(status, returncode, timed_out, 0, limits, kind)[1]
            if state == "failed" and not status.get("error") and not status.get("errno"):
                why = f"the re-run pod failed ({reason})"
            return {
                "status": "failed",
                "reason": why,
                "log": log_lines(status, returncode, timed_out, limits, "the pod's emptyDir size limit")
                + ([f"pod: {reason}"] if reason else []),
                "files": {},
                "images": {},
                "timings": timings,
                "limits": limits.__dict__,
            }
        try:
            report = json.loads((folder / "out" / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {}
        status = report.get("status") if isinstance(report.get("status"), dict) else {}
        returncode = int(status.get("exit", 1)) if str(status.get("exit", 1)).lstrip("-").isdigit() else 1
        made_dir = folder / "out" / "made"
        made = {
            str(path): str(digest)
            for path, digest in (report.get("files") or {}).items()
            if (made_dir / str(path)).is_file() and not (made_dir / str(path)).is_symlink()
        }
        sizes = sum((made_dir / path).stat().st_size for path in made)
        state_, why = outcome(status, returncode, False, sizes, limits, kind)
        copied: dict[str, str] = {}
        if state_ == "done":
            for relative in made:
                target = Path(plan["work"]) / "made" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(made_dir / relative, target, follow_symlinks=False)
            copied = made
        prints = report.get("prints") if isinstance(report.get("prints"), dict) else {}
        return {
            "status": state_,
            "reason": why,
            "log": log_lines(status, returncode, False, limits, "the pod's emptyDir size limit"),
            "files": copied,
            "images": split_prints(prints, POD_HOME, f"{POD_IN}/submitted") if state_ == "done" else {},
            "timings": timings,
            "limits": limits.__dict__,
        }

    def _delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.batch.delete_namespaced_job(name, self.cluster.namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status != 404:
                raise


def launcher_for(plan: dict[str, Any]) -> Launcher:
    """A launcher talking to the cluster the worker runs in (its service account), else ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.ApiClient()
    cluster = ClusterSettings.from_dict(copy.deepcopy(plan.get("kubernetes") or {}))
    return Launcher(cluster, client.BatchV1Api(api), client.CoreV1Api(api), client.NetworkingV1Api(api))


def run(plan: dict[str, Any]) -> dict[str, Any]:
    return launcher_for(plan)(plan)


if __name__ == "__main__":
    from jupyter.rerun import main

    sys.exit(main(run))
