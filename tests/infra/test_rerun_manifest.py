"""The Kubernetes form of a re-run (infra/production/kubernetes/rerun/job-template.yaml) keeps the
local sandbox's guarantees: no network, non-root, nothing of the host, the extract read-only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

KUBERNETES = Path(__file__).resolve().parents[2] / "infra" / "production" / "kubernetes"


def template() -> dict[str, Any]:
    text = (KUBERNETES / "rerun" / "job-template.yaml").read_text()
    filled = re.sub(r"\$\{[A-Z_]+\}", "1", text)  # what a launcher fills in
    return yaml.safe_load(filled)


def policies() -> list[dict[str, Any]]:
    with (KUBERNETES / "networkpolicies.yaml").open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return wanted.items() <= labels.items()


def test_no_network_policy_opens_any_egress_or_ingress_to_a_rerun_pod() -> None:
    labels = template()["spec"]["template"]["metadata"]["labels"]

    applying = [p for p in policies() if selects(p, labels)]

    names = {p["metadata"]["name"] for p in applying}
    assert {"default-deny-all", "rerun-deny-all"} <= names
    assert all(not p["spec"].get("egress") and not p["spec"].get("ingress") for p in applying), names
    assert labels.get("app.kubernetes.io/name") != "tre-control-plane"


def test_a_rerun_pod_runs_unprivileged_with_nothing_of_the_host_and_the_extract_read_only() -> None:
    job = template()
    pod = job["spec"]["template"]["spec"]
    containers = [*pod["initContainers"], *pod["containers"]]

    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert not any("hostPath" in volume for volume in pod["volumes"])
    for container in containers:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
        assert security["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory", "ephemeral-storage"} <= container["resources"]["limits"].keys()
    extracts = [m for c in containers for m in c["volumeMounts"] if m["name"] == "extract"]
    assert extracts and all(m["readOnly"] is True for m in extracts)
