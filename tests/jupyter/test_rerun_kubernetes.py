"""The Kubernetes re-run launcher (jupyter/rerun_kubernetes.py, ADR 0029).

There is no cluster here. What is proved, and how:
* the Job it builds from infra/production/kubernetes/rerun/job-template.yaml is a valid Kubernetes Job
  (kubernetes-validate, strict) and keeps the local sandbox's guarantees (``guarantees``), and each way
  of loosening it is caught, so the launcher refuses to launch it;
* its control flow, against a small fake API server (real HTTP, the real ``kubernetes`` client): it
  checks the cluster's rerun-deny-all NetworkPolicy before creating anything, creates the Job (the fake
  validates the body it receives), waits, collects the pod's report and files from the work volume,
  reports a deadline or an OOM kill as the local sandbox words it, replaces a killed attempt's Job, and
  always deletes the Job. What a fake cannot prove (that the cluster's network plugin enforces the
  policy, that the kubelet enforces the limits, that the pod starts) is not claimed.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from jupyter.rerun import Limits, RerunError
from jupyter.rerun_kubernetes import (
    KUBERNETES,
    ClusterSettings,
    Launcher,
    build_job,
    deny_all_policy,
    fill,
    guarantees,
)

kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes client is not installed (the kubernetes extra)")
validator = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
KUBERNETES_VERSION = "1.30.0"
RERUN_ID, PROJECT_ID = "0f" * 16, "ab" * 16
LIMITS = {"cpu_seconds": 60, "memory_bytes": 2 * 1024**3, "disk_bytes": 256 * 1024**2, "wall_seconds": 120}


def plan(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    work = tmp_path / "work"
    (work / "submitted").mkdir(parents=True, exist_ok=True)
    (work / "submitted" / "figure.png").write_bytes(b"\x89PNG not really")
    (work / "code").write_text('{"nbformat": 4, "cells": []}')
    return {
        "runtime": "/opt/tre-workspace",
        "work": str(work),
        "code_file": str(work / "code"),
        "code_path": "analysis/table 1.ipynb",
        "kind": "notebook",
        "extract": "",
        "extract_version": "e" * 64,
        "limits": LIMITS,
        "rerun_id": RERUN_ID,
        "project_id": PROJECT_ID,
        **extra,
    }


def cluster(tmp_path: Path) -> ClusterSettings:
    return ClusterSettings(work_dir=str(tmp_path / "rerun-work"), image="registry.example/tre/workspace:1")


def the_job(tmp_path: Path) -> dict[str, Any]:
    return build_job(plan(tmp_path), cluster(tmp_path))


# --- the manifests ----------------------------------------------------------------------------------


def test_the_job_built_from_the_template_is_a_valid_kubernetes_job(tmp_path: Path) -> None:
    validator.validate(the_job(tmp_path), KUBERNETES_VERSION, strict=True)


def test_the_launchers_rights_and_work_volume_are_valid_manifests() -> None:
    with (KUBERNETES / "rerun" / "launcher.yaml").open() as handle:
        documents = [d for d in yaml.safe_load_all(handle) if d]

    for document in documents:
        validator.validate(document, KUBERNETES_VERSION, strict=True)
    (role,) = [d for d in documents if d["kind"] == "Role"]
    policies = [r for r in role["rules"] if "networkpolicies" in r["resources"]]
    assert policies == [
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies"],
            "resourceNames": ["rerun-deny-all"],
            "verbs": ["get"],
        }
    ]  # it may read the one policy; it may not create or loosen any
    assert not any("secrets" in r["resources"] or "*" in r["verbs"] for r in role["rules"])


def test_the_job_keeps_every_guarantee_of_the_local_sandbox(tmp_path: Path) -> None:
    job = the_job(tmp_path)
    pod = job["spec"]["template"]["spec"]
    (run,), (collect,) = pod["initContainers"], pod["containers"]

    assert guarantees(job, deny_all_policy(), Limits.from_dict(LIMITS)) == []
    assert job["spec"]["activeDeadlineSeconds"] == 120 and job["spec"]["backoffLimit"] == 0
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsUser"] == 65534
    for container in (run, collect):
        assert container["resources"]["limits"]["memory"] == "2048Mi"
        assert container["command"][:5] == [
            "prlimit",
            "--cpu=60",
            f"--as={2 * 1024**3}",
            f"--fsize={256 * 1024**2}",
            "--core=0",
        ]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["image"] == "registry.example/tre/workspace:1"
    # The code's container sees the extract (read-only) and never the folder the worker reads back.
    mounts = {m["mountPath"]: m for m in run["volumeMounts"]}
    assert mounts["/extract"]["readOnly"] and mounts["/extract"]["subPath"] == PROJECT_ID
    assert "/opt/tre-rerun/out" not in mounts and mounts["/opt/tre-rerun/in"]["readOnly"]
    assert run["command"][-3:] == ["job-run", "notebook", "analysis/table 1.ipynb"]
    env = {e["name"]: e["value"] for e in run["env"]}
    assert env["EXTRACT_VERSION"] == "e" * 64 and env["TRE_EXTRACT_DIR"] == "/extract" and env["TRE_RERUN"] == "1"
    # The collector reads the home it did not run in, read-only.
    assert {m["mountPath"]: m.get("readOnly", False) for m in collect["volumeMounts"]}["/home/tre-rerun"] is True


def _loosen(path: str, value: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def change(job: dict[str, Any], policy: dict[str, Any]) -> None:
        target: Any = {"job": job, "policy": policy}
        *parents, last = path.split(".")
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_loosen("policy.spec.egress", [{}]), "allows traffic"),
        (_loosen("policy.spec.ingress", [{"from": [{"podSelector": {}}]}]), "allows traffic"),
        (_loosen("policy.spec.policyTypes", ["Ingress"]), "both ingress and egress"),
        (
            _loosen("policy.spec.podSelector", {"matchLabels": {"app.kubernetes.io/component": "other"}}),
            "does not select",
        ),
        (
            lambda job, policy: job["spec"]["template"]["metadata"]["labels"].update(
                {"app.kubernetes.io/name": "tre-control-plane"}
            ),
            "control plane",
        ),
        (_loosen("job.spec.template.spec.automountServiceAccountToken", True), "service-account token"),
        (_loosen("job.spec.template.spec.hostNetwork", True), "host namespace"),
        (_loosen("job.spec.template.spec.dnsPolicy", "ClusterFirst"), "no cluster DNS"),
        (_loosen("job.spec.template.spec.securityContext.runAsUser", 0), "non-root"),
        (_loosen("job.spec.template.spec.volumes.0", {"name": "home", "hostPath": {"path": "/"}}), "host paths"),
        (_loosen("job.spec.template.spec.initContainers.0.securityContext.readOnlyRootFilesystem", False), "read-only"),
        (
            _loosen(
                "job.spec.template.spec.initContainers.0.securityContext.capabilities",
                {"drop": ["ALL"], "add": ["NET_RAW"]},
            ),
            "capability",
        ),
        (_loosen("job.spec.template.spec.containers.0.resources.limits", {"cpu": "1"}), "limits must be set"),
        (
            _loosen("job.spec.template.spec.initContainers.0.volumeMounts.2.readOnly", False),
            "extract must be read-only",
        ),
        (_loosen("job.spec.activeDeadlineSeconds", 99999), "wall-time limit"),
        (_loosen("job.spec.backoffLimit", 3), "not be retried"),
    ],
)
def test_each_loosening_of_the_job_or_its_policy_is_caught(tmp_path: Path, change: Any, problem: str) -> None:
    job, policy = the_job(tmp_path), deny_all_policy()
    change(job, policy)

    problems = guarantees(job, policy, Limits.from_dict(LIMITS))

    assert any(problem in p for p in problems), problems


def test_values_are_filled_after_parsing_so_none_can_add_yaml(tmp_path: Path) -> None:
    filled = fill({"a": "${X}", "b": ["--cpu=${N}"], "c": "${N}"}, {"X": "x\nhostNetwork: true", "N": 5})

    assert filled == {"a": "x\nhostNetwork: true", "b": ["--cpu=5"], "c": 5}
    with pytest.raises(RerunError, match="relative to the home"):
        build_job(plan(tmp_path, code_path="../../etc/shadow.py"), cluster(tmp_path))
    with pytest.raises(RerunError, match="hexadecimal"):
        build_job(plan(tmp_path, rerun_id="x; kubectl delete"), cluster(tmp_path))


# --- the control flow, against a fake API server ----------------------------------------------------


class FakeCluster:
    """Just enough of the Kubernetes API for the launcher, on a real loopback HTTP server. A created Job
    'runs' by calling ``pod`` (which writes what the pod's collector would) and ends with the status it
    returns, seen on the second read (so the launcher must poll)."""

    def __init__(self, policy: dict[str, Any] | None, pod: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.policy, self.pod = policy, pod
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.reads: dict[str, int] = {}
        self.pods: list[dict[str, Any]] = []
        self.invalid: list[str] = []

    def handle(self, method: str, url: str, body: Any) -> tuple[int, Any]:
        path, _, query = url.partition("?")
        self.calls.append(f"{method} {path}" + (f"?{query}" if method == "DELETE" else ""))
        base = "/apis/batch/v1/namespaces/tre/jobs"
        if path == "/apis/networking.k8s.io/v1/namespaces/tre/networkpolicies/rerun-deny-all" and method == "GET":
            return (200, self.policy) if self.policy else (404, {"kind": "Status", "code": 404})
        if path == base and method == "POST":
            try:
                validator.validate(body, KUBERNETES_VERSION, strict=True)
            except validator.ValidationError as error:
                self.invalid.append(error.message)
                return 422, {"kind": "Status", "code": 422}
            name = body["metadata"]["name"]
            if name in self.jobs:
                return 409, {"kind": "Status", "code": 409}
            self.jobs[name] = {**body, "status": self.pod(body)}
            return 201, body
        if path.startswith(base + "/"):
            name = path[len(base) + 1 :].split("/")[0]
            if name not in self.jobs:
                return 404, {"kind": "Status", "code": 404}
            if method == "DELETE":
                del self.jobs[name]
                return 200, {"kind": "Status", "code": 200}
            self.reads[name] = self.reads.get(name, 0) + 1
            status = self.jobs[name]["status"] if self.reads[name] > 1 else {"active": 1}
            return 200, {**self.jobs[name], "status": status}
        if path == "/api/v1/namespaces/tre/pods" and method == "GET":
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": self.pods}
        return 404, {"kind": "Status", "code": 404}


@pytest.fixture
def serve() -> Iterator[Callable[[FakeCluster], Any]]:
    servers: list[ThreadingHTTPServer] = []

    def start(fake: FakeCluster) -> Any:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                code, answer = fake.handle(self.command, self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        configuration = kubernetes.client.Configuration()
        configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
        return kubernetes.client.ApiClient(configuration)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def launcher(tmp_path: Path, api: Any) -> Launcher:
    client = kubernetes.client
    return Launcher(
        cluster(tmp_path),
        client.BatchV1Api(api),
        client.CoreV1Api(api),
        client.NetworkingV1Api(api),
        sleep=lambda s: None,
    )


def collector_writes(
    tmp_path: Path, files: dict[str, bytes], status: dict[str, Any]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What the pod's collect container leaves in out/ (jupyter.rerun_driver job-collect)."""

    def pod(job: dict[str, Any]) -> dict[str, Any]:
        folder = tmp_path / "rerun-work" / RERUN_ID
        assert (folder / "in" / "code").is_file() and (folder / "in" / "submitted" / "figure.png").is_file()
        for name, data in files.items():
            (folder / "out" / "made" / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / "out" / "made" / name).write_bytes(data)
        report = {"status": status, "files": {name: "sha" for name in files}, "prints": {}}
        (folder / "out" / "report.json").write_text(json.dumps(report))
        return {"succeeded": 1}

    return pod


def test_a_job_that_succeeds_is_collected_like_a_local_re_run_and_deleted(tmp_path: Path, serve: Any) -> None:
    fake = FakeCluster(
        deny_all_policy(), collector_writes(tmp_path, {"outputs/t.csv": b"a,b\n1,2\n"}, {"status": "ok", "exit": 0})
    )

    answer = launcher(tmp_path, serve(fake))(plan(tmp_path))

    assert answer["status"] == "done", answer
    assert answer["files"] == {"outputs/t.csv": "sha"}
    assert (tmp_path / "work" / "made" / "outputs" / "t.csv").read_bytes() == b"a,b\n1,2\n"
    name = f"tre-rerun-{RERUN_ID}"
    assert fake.calls[:2] == [
        "GET /apis/networking.k8s.io/v1/namespaces/tre/networkpolicies/rerun-deny-all",
        "POST /apis/batch/v1/namespaces/tre/jobs",
    ]
    assert fake.reads[name] == 2
    assert fake.calls[-1] == f"DELETE /apis/batch/v1/namespaces/tre/jobs/{name}?propagationPolicy=Background"
    assert fake.invalid == [] and fake.jobs == {}
    assert not (tmp_path / "rerun-work" / RERUN_ID).exists()


def test_nothing_is_launched_without_the_deny_all_policy_or_with_a_loosened_one(tmp_path: Path, serve: Any) -> None:
    loosened = copy.deepcopy(deny_all_policy())
    loosened["spec"]["egress"] = [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]
    for policy, message in ((None, "has no rerun-deny-all"), (loosened, "allows traffic")):
        fake = FakeCluster(policy, collector_writes(tmp_path, {}, {"status": "ok"}))

        with pytest.raises(RerunError, match=message):
            launcher(tmp_path, serve(fake))(plan(tmp_path))

        assert not any(call.startswith("POST") for call in fake.calls)


def test_a_job_past_its_deadline_is_reported_as_the_wall_time_limit(tmp_path: Path, serve: Any) -> None:
    failed = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}
    fake = FakeCluster(deny_all_policy(), lambda job: failed)

    answer = launcher(tmp_path, serve(fake))(plan(tmp_path))

    assert answer["status"] == "failed" and "wall-time limit (120 s)" in answer["reason"]
    assert fake.jobs == {}


def test_a_pod_killed_for_memory_is_reported_as_the_memory_limit(tmp_path: Path, serve: Any) -> None:
    failed = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    fake = FakeCluster(deny_all_policy(), lambda job: failed)
    terminated = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    fake.pods = [
        {
            "metadata": {"name": "p"},
            "status": {
                "initContainerStatuses": [
                    {
                        "name": "rerun",
                        "image": "i",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": terminated,
                    }
                ]
            },
        }
    ]

    answer = launcher(tmp_path, serve(fake))(plan(tmp_path))

    assert answer["status"] == "failed" and "more memory than the re-run allows (2048 MB)" in answer["reason"]


def test_a_killed_attempts_job_is_replaced_not_trusted(tmp_path: Path, serve: Any) -> None:
    fake = FakeCluster(
        deny_all_policy(), collector_writes(tmp_path, {"outputs/t.csv": b"x\n"}, {"status": "ok", "exit": 0})
    )
    name = f"tre-rerun-{RERUN_ID}"
    fake.jobs[name] = {"metadata": {"name": name}, "status": {"succeeded": 1}}  # the last attempt's

    answer = launcher(tmp_path, serve(fake))(plan(tmp_path))

    assert answer["status"] == "done"
    posts = [c for c in fake.calls if c.startswith("POST")]
    assert len(posts) == 2
    assert f"DELETE /apis/batch/v1/namespaces/tre/jobs/{name}?propagationPolicy=Background" in fake.calls


def test_code_that_failed_in_the_pod_is_reported_with_its_reason(tmp_path: Path, serve: Any) -> None:
    status = {"status": "failed", "error": "URLError", "errno": "ENETUNREACH", "cell": 2, "exit": 1}
    fake = FakeCluster(deny_all_policy(), collector_writes(tmp_path, {}, status))

    answer = launcher(tmp_path, serve(fake))(plan(tmp_path))

    assert answer["status"] == "failed" and "no network at all" in answer["reason"] and "cell 2" in answer["reason"]
    assert answer["files"] == {}


# --- the pod's own commands, run in the local sandbox ------------------------------------------------


def _in_local_sandbox(job: dict[str, Any], volumes: dict[str, Path]) -> None:
    """Run the Job's two containers as the kubelet would, one after the other, each in a bubblewrap
    sandbox with the Job's own mounts (volume name -> host folder; claims by sub-path), command and
    environment: the pod's commands are proved against the driver, not only their manifest."""
    from jupyter.rerun import DRIVER, HOME, _etc_files, _run_sandboxed, bwrap_argv
    from tests.jupyter.realhub import RUNTIME

    pod = job["spec"]["template"]["spec"]
    etc = _etc_files()
    for container in [*pod["initContainers"], *pod["containers"]]:
        binds, home, home_writable = [], "", True
        for mount in container["volumeMounts"]:
            source = volumes[mount["name"]] / mount.get("subPath", "")
            source.mkdir(parents=True, exist_ok=True)
            if mount["mountPath"] == HOME:
                home, home_writable = str(source), not mount.get("readOnly", False)
            elif mount["mountPath"] != "/tmp":  # noqa: S108  # nosec B108 - bwrap gives a fresh tmpfs
                binds.append((str(source), mount["mountPath"], not mount.get("readOnly", False)))
        command = container["command"][container["command"].index("--") + 1 :]
        assert command[:3] == ["/opt/tre-workspace/bin/python", "-m", "jupyter.rerun_driver"]
        argv = bwrap_argv(
            runtime=str(RUNTIME),
            home=home,
            extract="",
            driver=str(Path(__file__).resolve().parents[2] / "jupyter" / "rerun_driver.py"),
            binds=binds,
            files={name: f"@fd:{name}" for name in etc},  # type: ignore[misc]
            tmp_bytes=64 * 1024**2,
            home_writable=home_writable,
        )
        env = {e["name"]: e["value"].replace("/opt/tre-workspace", str(RUNTIME)) for e in container["env"]}
        code, *_ = _run_sandboxed(
            [*argv, str(RUNTIME / "bin" / "python"), DRIVER, *command[3:]],
            env,
            etc,
            Limits.from_dict(LIMITS),
            capture=False,
        )
        assert code == 0, container["name"]


@pytest.mark.integration
def test_the_pods_commands_run_a_notebook_and_collect_its_files(tmp_path: Path, serve: Any) -> None:
    import shutil

    from tests.jupyter.realhub import RUNTIME

    if not (RUNTIME / "bin" / "python").exists() or shutil.which("bwrap") is None:
        pytest.skip("WORKSPACE RUNTIME NOT BUILT or BUBBLEWRAP NOT INSTALLED")
    from jupyter.client import extract_version
    from tests.jupyter.test_rerun import notebook

    extracts = tmp_path / "extracts"
    (extracts / PROJECT_ID / "cohort").mkdir(parents=True)
    (extracts / PROJECT_ID / "cohort" / "manifest.json").write_text('{"rows": 3}')
    (extracts / PROJECT_ID / "cohort" / "rows.csv").write_text("age\n40\n50\n60\n")
    code = notebook(
        "import os, pandas as pd\n"
        "rows = pd.read_csv(os.path.join(os.environ['TRE_EXTRACT_DIR'], 'cohort', 'rows.csv'))\n"
        "os.makedirs('../outputs', exist_ok=True)\n"
        "rows[rows.age > 45].describe().to_csv('../outputs/summary.csv')"
    )
    the_plan = plan(
        tmp_path, extract=str(extracts / PROJECT_ID), extract_version=extract_version(extracts / PROJECT_ID)
    )
    Path(the_plan["code_file"]).write_text(code)
    volumes = {
        "home": tmp_path / "pod-home",
        "work": tmp_path / "rerun-work",
        "extract": extracts,
        "tmp": tmp_path / "t",
    }

    def pod(job: dict[str, Any]) -> dict[str, Any]:
        _in_local_sandbox(job, volumes)
        return {"succeeded": 1}

    answer = launcher(tmp_path, serve(FakeCluster(deny_all_policy(), pod)))(the_plan)

    assert answer["status"] == "done", answer
    assert set(answer["files"]) == {"outputs/summary.csv"}
    assert "count,2.0" in (tmp_path / "work" / "made" / "outputs" / "summary.csv").read_text()
