"""The production deployment files (infra/production), checked with real parsers since no cluster runs here.

Kubernetes manifests are read with PyYAML and checked against the Kubernetes JSON schemas shipped by
``kubernetes-validate`` (offline) when it is installed, and always structurally: probes point at
routes the app really has, every command is a real ``tre`` subcommand, every ``TRE_*`` variable is a
real setting, pods are locked down, traffic is denied unless a NetworkPolicy allows it. The systemd
units are read with configparser, the gunicorn settings are executed.
"""

from __future__ import annotations

import configparser
import dataclasses
import datetime as dt
import io
import json
import logging
import re
import runpy
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner

from tre.cli import main as tre_main
from tre.core.config import Settings
from tre.core.jobs import QUEUES

REPO = Path(__file__).resolve().parents[2]
PRODUCTION = REPO / "infra" / "production"
KUBERNETES = PRODUCTION / "kubernetes"
SYSTEMD = PRODUCTION / "systemd"
GUNICORN_CONF = PRODUCTION / "gunicorn.conf.py"
KUBERNETES_VERSION = "1.30.0"

SETTING_NAMES = {"TRE_" + f.name.upper() for f in dataclasses.fields(Settings)}
# Read by the code outside Settings on purpose (keys and backup passphrases never sit in Settings).
EXTRA_VARIABLES = {"TRE_MASTER_KEY", "TRE_BACKUP_PASSPHRASE", "TRE_INSTANCE_PATH"}
# Read inside a workspace or a re-run pod (the runtime's code), not by the service.
WORKSPACE_VARIABLES = {"TRE_EXTRACT_DIR", "TRE_OUTPUTS_DIR", "TRE_RERUN"}
SECRET_VARIABLES = {"TRE_MASTER_KEY", "TRE_DATABASE_URL", "TRE_BROKER_URL", "TRE_METRICS_TOKEN",
                    "TRE_BACKUP_PASSPHRASE", "TRE_OIDC_CLIENT_SECRET"}
WORKLOAD_KINDS = {"Deployment", "Job", "CronJob"}


# --- reading the files ---------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in manifest_files():
        with path.open(encoding="utf-8") as fh:
            out += [(path, doc) for doc in yaml.safe_load_all(fh) if doc]
    return out


def applied_documents() -> list[dict[str, Any]]:
    """What ``kubectl apply -k`` applies: the files listed in kustomization.yaml."""
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    return [doc for path, doc in documents() if path.name in listed]


def find(kind: str, name: str) -> dict[str, Any]:
    for doc in applied_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name} is applied")


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads() -> list[dict[str, Any]]:
    return [doc for doc in applied_documents() if doc["kind"] in WORKLOAD_KINDS]


def all_containers() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}", c) for doc in workloads() for c in containers(doc)]


def systemd_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text(encoding="utf-8"))
    return parser


def procfile() -> dict[str, str]:
    entries = {}
    for line in (PRODUCTION / "Procfile").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def tre_invocations(argv: list[str]) -> list[list[str]]:
    """The ``tre ...`` commands inside one command line, including those inside ``sh -c`` scripts."""
    if len(argv) >= 3 and Path(argv[0]).name in {"sh", "bash"} and argv[1] == "-c":
        words = shlex.split(argv[2])
        found, current = [], None
        for word in words:
            if Path(word).name == "tre" and current is None:
                current = []
            elif current is not None and word in {"&&", "||", ";", "|"}:
                found.append(current)
                current = None
            elif current is not None:
                current.append(word)
        if current is not None:
            found.append(current)
        return found
    if argv and Path(argv[0]).name == "tre":
        return [argv[1:]]
    return []


def every_command_line() -> list[tuple[str, list[str]]]:
    """(where, argv) of every process the deployment files start."""
    lines = [(f"Procfile {name}", shlex.split(cmd)) for name, cmd in procfile().items()]
    for unit in sorted(SYSTEMD.glob("*.service")):
        service = systemd_unit(unit.name)["Service"]
        for key in ("ExecStartPre", "ExecStart"):
            if key in service:
                raw = service[key].replace("%%", "%")
                variants = [raw.replace("%i", q) for q in QUEUES] if "%i" in raw else [raw]
                lines += [(f"{unit.name} {key}", shlex.split(v)) for v in variants]
    lines += [(where, c["command"] + c.get("args", [])) for where, c in all_containers()]
    return lines


# --- Kubernetes: shape -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_document_has_api_version_kind_and_name(path: Path) -> None:
    with path.open(encoding="utf-8") as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    assert docs, f"{path.name} holds no document"
    for doc in docs:
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], path.name
        assert isinstance(doc.get("kind"), str) and doc["kind"], path.name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]


def test_manifests_are_valid_against_the_kubernetes_schemas() -> None:
    validator = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    for path, doc in documents():
        try:
            validator.validate(doc, KUBERNETES_VERSION, strict=True)
        except validator.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in manifest_files()}
    assert listed <= files, f"kustomization lists missing files: {listed - files}"
    assert files - listed == {"secret.example.yaml"}


def test_kustomize_renders_the_manifests_with_the_image_set() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize rendering not checked")
    done = subprocess.run([kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert len(rendered) == len(applied_documents())
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "tre", doc["metadata"]["name"]
        if doc["kind"] in WORKLOAD_KINDS:
            for c in containers(doc):
                assert c["image"].startswith("registry.example.nhs.uk/tre/control-plane:"), c["image"]


def test_deployment_selectors_match_their_pod_labels() -> None:
    for doc in applied_documents():
        if doc["kind"] == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            for key, value in doc["spec"]["selector"]["matchLabels"].items():
                assert labels.get(key) == value, f"{doc['metadata']['name']}: selector {key} does not match"


def test_web_runs_at_least_two_replicas_kept_up_by_a_disruption_budget() -> None:
    web = find("Deployment", "tre-web")
    assert web["spec"]["replicas"] >= 2
    assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = find("PodDisruptionBudget", "tre-web")
    assert pdb["spec"]["minAvailable"] >= 1
    pod_labels = web["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_web_service_targets_a_port_the_web_container_declares() -> None:
    service = find("Service", "tre-control-plane")
    web = find("Deployment", "tre-web")
    assert service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()
    names = {p["name"] for c in containers(web) for p in c.get("ports", [])}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_beat_is_one_replica_replaced_by_recreate() -> None:
    beat = find("Deployment", "tre-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert containers(beat)[0]["command"] == ["tre", "beat"]


def test_every_queue_has_its_own_worker_deployment_without_beat() -> None:
    served: dict[str, str] = {}
    for doc in applied_documents():
        if doc["kind"] != "Deployment":
            continue
        for c in containers(doc):
            argv = c["command"]
            if argv[:2] == ["tre", "worker"]:
                assert "--no-beat" in argv, f"{doc['metadata']['name']} would run a second scheduler"
                queue = argv[argv.index("-Q") + 1]
                assert queue in QUEUES, queue
                served[queue] = doc["metadata"]["name"]
    assert set(served) == set(QUEUES)


def test_migration_job_upgrades_the_database() -> None:
    job = find("Job", "tre-migrate")
    assert containers(job)[-1]["command"] == ["tre", "db", "upgrade"]
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_backup_cronjob_writes_tre_backup_archives_to_a_persistent_volume() -> None:
    cron = find("CronJob", "tre-backup")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = containers(cron)
    (backup,) = [argv for argv in tre_invocations(container["command"]) if argv[0] == "backup"]
    archive = backup[1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    mount = next(path for path in mounts if archive.startswith(path.rstrip("/") + "/"))
    volume = next(v for v in pod_spec(cron)["volumes"] if v["name"] == mounts[mount])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert find("PersistentVolumeClaim", claim)


# --- Kubernetes: the app's routes, commands and settings --------------------------------------------


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    from tests.conftest import make_test_app

    tmp = tmp_path_factory.mktemp("routes")
    app = make_test_app(tmp / "instance", f"sqlite:///{tmp / 'tre.sqlite'}")
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    app.extensions["tre.db"].dispose()
    return rules


def test_web_containers_probe_liveness_and_readiness_on_the_apps_routes(app_routes: set[str]) -> None:
    (web,) = containers(find("Deployment", "tre-web"))
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port_names = {p["name"] for p in web["ports"]}
    for where, container in all_containers():
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            http = container.get(probe, {}).get("httpGet")
            if http:
                assert http["path"] in app_routes, f"{where} {probe} asks for {http['path']}, not a route"
                assert http["port"] in port_names or isinstance(http["port"], int), where


def test_prometheus_scrape_annotations_name_the_metrics_route_and_port(app_routes: set[str]) -> None:
    web = find("Deployment", "tre-web")
    notes = web["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/path"] in app_routes
    ports = {str(p["containerPort"]) for c in containers(web) for p in c.get("ports", [])}
    assert notes["prometheus.io/port"] in ports
    config = find("ConfigMap", "tre-config")["data"]
    assert notes["prometheus.io/port"] == config["TRE_PORT"]
    assert config["TRE_HOST"] == "0.0.0.0"


def test_every_command_is_a_real_tre_subcommand() -> None:
    runner = CliRunner()
    checked = 0
    for where, argv in every_command_line():
        for args in tre_invocations(argv):
            result = runner.invoke(tre_main, [*args, "--help"])
            assert result.exit_code == 0, f"{where}: `tre {' '.join(args)}` is not a command: {result.output}"
            if args[0] == "worker":
                queue = args[args.index("-Q") + 1]
                assert queue in QUEUES, f"{where}: unknown queue {queue}"
            checked += 1
    assert checked >= 10


def test_every_gunicorn_command_uses_the_production_config_and_the_wsgi_app() -> None:
    import importlib.util

    seen = 0
    for where, argv in every_command_line():
        if Path(argv[0]).name != "gunicorn":
            continue
        config = argv[argv.index("--config") + 1]
        assert config.endswith("infra/production/gunicorn.conf.py"), where
        module, _, attribute = argv[-1].partition(":")
        assert attribute == "app" and importlib.util.find_spec(module) is not None, where
        seen += 1
    assert seen >= 3  # Procfile, systemd, Kubernetes


def _tre_variables(text: str) -> set[str]:
    return set(re.findall(r"\bTRE_[A-Z0-9_]*[A-Z0-9]\b", text))


def test_every_tre_variable_in_the_deployment_files_is_a_real_setting() -> None:
    files = [p for p in PRODUCTION.rglob("*") if p.is_file() and p.suffix != ".pyc"]
    known = SETTING_NAMES | EXTRA_VARIABLES
    for path in files:
        workspace = WORKSPACE_VARIABLES if path.parent.name == "rerun" else set()  # a re-run pod's own
        unknown = _tre_variables(path.read_text(encoding="utf-8")) - known - workspace
        assert not unknown, f"{path.relative_to(REPO)} names variables the service does not read: {unknown}"


def test_config_map_holds_settings_and_no_secret() -> None:
    data = find("ConfigMap", "tre-config")["data"]
    names = {k for k in data if k.startswith("TRE_")}
    assert names <= SETTING_NAMES | EXTRA_VARIABLES
    assert not names & SECRET_VARIABLES
    assert data["TRE_ENVIRONMENT"] == "production"
    assert data["TRE_PUBLIC_URL"].startswith("https://")
    assert data["TRE_SESSION_COOKIE_SECURE"] == "true"
    assert data["TRE_LOG_FORMAT"] == "json"
    # The values must also be values the settings accept.
    settings = Settings.from_env({k: v for k, v in data.items() if k.startswith("TRE_")})
    assert settings.environment == "production"


def test_every_container_takes_its_secrets_from_secrets() -> None:
    for where, container in all_containers():
        refs = {r["secretRef"]["name"] for r in container.get("envFrom", []) if "secretRef" in r}
        assert "tre-secrets" in refs, where
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["TRE_MASTER_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "tre-master-key", where
        for name in SECRET_VARIABLES & env.keys():
            assert "value" not in env[name], f"{where} writes {name} in clear"


def test_every_pod_runs_as_non_root_with_a_read_only_root_and_no_capabilities() -> None:
    for doc in workloads():
        pod = pod_spec(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
    for where, container in all_containers():
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True, where
        assert ctx["readOnlyRootFilesystem"] is True, where
        assert ctx["allowPrivilegeEscalation"] is False, where
        assert ctx["capabilities"]["drop"] == ["ALL"], where
        assert not ctx["capabilities"].get("add"), where


def test_every_container_has_cpu_and_memory_requests_and_limits() -> None:
    for where, container in all_containers():
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys(), f"{where} {kind}"


def test_read_only_pods_get_a_writable_tmp_and_the_web_a_metrics_folder() -> None:
    for where, container in all_containers():
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, where  # noqa: S108
    (web,) = containers(find("Deployment", "tre-web"))
    env = {e["name"]: e.get("value") for e in web["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"] in {m["mountPath"] for m in web["volumeMounts"]}


# --- Kubernetes: network policies ---------------------------------------------------------------


def policies() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in applied_documents() if d["kind"] == "NetworkPolicy"}


def test_namespace_denies_all_ingress_and_egress_by_default() -> None:
    deny = [p for p in policies().values() if p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert deny, "no default-deny NetworkPolicy for ingress and egress"


def test_egress_is_allowed_only_to_dns_postgresql_redis_rabbitmq_and_the_hub_api() -> None:
    allowed_ports = {53, 5432, 6379, 5672, 8081}  # DNS, PostgreSQL, Redis, RabbitMQ, JupyterHub's API
    for name, policy in policies().items():
        for rule in policy["spec"].get("egress", []):
            assert rule.get("ports"), f"{name}: an egress rule without ports opens every port"
            assert {p["port"] for p in rule["ports"]} <= allowed_ports, name
            assert rule.get("to"), f"{name}: an egress rule without destinations allows anywhere"
            for peer in rule["to"]:
                assert "ipBlock" not in peer or peer["ipBlock"]["cidr"] not in {"0.0.0.0/0", "::/0"}, name


def test_only_the_web_pods_take_ingress_and_only_on_their_port() -> None:
    web_labels = find("Deployment", "tre-web")["spec"]["template"]["metadata"]["labels"]
    port = find("Deployment", "tre-web")["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    sources = set()
    for name, policy in policies().items():
        rules = policy["spec"].get("ingress", [])
        if not rules:
            continue
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= web_labels.items(), name
        for rule in rules:
            assert {p["port"] for p in rule["ports"]} == {port}, name
            assert rule.get("from"), f"{name}: an ingress rule without sources allows everyone"
            for peer in rule["from"]:
                namespace = peer.get("namespaceSelector", {}).get("matchLabels", {})
                sources.add(namespace.get("kubernetes.io/metadata.name", "this namespace"))
    assert {"ingress-nginx", "this namespace"} <= sources


def test_allowances_select_control_plane_pods_only_so_workspaces_stay_closed() -> None:
    # JupyterHub shares the namespace: an allowance for every pod would open DNS or egress to workspaces.
    for name, policy in policies().items():
        spec = policy["spec"]
        if spec.get("ingress") or spec.get("egress"):
            assert spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "tre-control-plane", name


def test_every_tre_pod_is_covered_by_the_backend_egress_policy() -> None:
    selector = policies()["allow-backend-egress"]["spec"]["podSelector"]["matchLabels"]
    for doc in workloads():
        spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        template = spec["template"]
        assert selector.items() <= template["metadata"]["labels"].items(), doc["metadata"]["name"]


def test_jupyterhub_values_reach_the_control_plane_service_and_pods() -> None:
    values_file = REPO / "infra" / "jupyterhub" / "values.yaml"
    if not values_file.exists():
        pytest.skip("no Zero-to-JupyterHub values in this tree")
    values = yaml.safe_load(values_file.read_text(encoding="utf-8"))
    url = urlsplit(values["hub"]["extraEnv"]["TRE_CONTROL_PLANE_URL"])
    service = find("Service", "tre-control-plane")
    assert url.hostname == f"{service['metadata']['name']}.tre.svc.cluster.local"
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    web = find("Deployment", "tre-web")["spec"]["template"]
    for rule in values["singleuser"]["networkPolicy"]["egress"] + values["hub"]["networkPolicy"]["egress"]:
        for peer in rule["to"]:
            assert peer["podSelector"]["matchLabels"].items() <= web["metadata"]["labels"].items()
        assert {p["port"] for p in rule["ports"]} <= {p["containerPort"] for p in web["spec"]["containers"][0]["ports"]}


# --- systemd --------------------------------------------------------------------------------------


UNITS = sorted(p.name for p in SYSTEMD.glob("*.service"))
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
             "PrivateDevices": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": ""}


@pytest.mark.parametrize("name", UNITS)
def test_systemd_unit_parses_and_is_hardened(name: str) -> None:
    unit = systemd_unit(name)
    assert unit.has_section("Unit") and unit.has_section("Service")
    service = unit["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{name}: {key} should be {value!r}"
    assert service["User"] == "tre" and service["User"] != "root"
    assert service["EnvironmentFile"] == "/etc/tre/tre.env"
    assert service["ExecStart"].split()[0].startswith("/"), "systemd needs an absolute program path"


def test_units_can_write_the_instance_folder_named_in_env_example() -> None:
    instance = env_example()["TRE_INSTANCE_PATH"]
    for name in UNITS:
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        writable = [line.split("=", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("ReadWritePaths=")]
        assert any(instance.startswith(p.rstrip("/") + "/") or instance == p for p in writable), name


def test_worker_unit_is_a_template_serving_the_queue_named_after_the_at() -> None:
    service = systemd_unit("tre-worker@.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[argv.index("-Q") + 1] == "%i"
    assert "--no-beat" in argv


def test_web_unit_gives_gunicorn_a_private_metrics_folder_and_waits_for_migrations() -> None:
    unit = systemd_unit("tre-web.service")
    assert unit["Service"]["Environment"] == f"PROMETHEUS_MULTIPROC_DIR=/run/{unit['Service']['RuntimeDirectory']}"
    assert "tre-migrate.service" in unit["Unit"]["Requires"]
    migrate = shlex.split(systemd_unit("tre-migrate.service")["Service"]["ExecStart"])
    assert migrate[1:] == ["db", "upgrade"]


def test_backup_timer_runs_the_backup_service_that_calls_tre_backup() -> None:
    timer = systemd_unit("tre-backup.timer")
    assert timer["Timer"]["OnCalendar"] and timer["Timer"]["Persistent"] in {"yes", "true"}
    argv = shlex.split(systemd_unit("tre-backup.service")["Service"]["ExecStart"].replace("%%", "%"))
    (backup,) = tre_invocations(argv)
    assert backup[0] == "backup" and backup[1].startswith("/var/backups/tre/")
    unit_text = (SYSTEMD / "tre-backup.service").read_text(encoding="utf-8")
    assert "ReadWritePaths=/var/backups/tre" in unit_text


# --- Procfile -------------------------------------------------------------------------------------


def test_procfile_releases_with_a_migration_and_runs_web_beat_and_a_worker_per_queue() -> None:
    entries = procfile()
    assert entries["release"] == "tre db upgrade"
    assert entries["beat"] == "tre beat"
    assert shlex.split(entries["web"])[0] == "gunicorn"
    queues = [shlex.split(cmd)[shlex.split(cmd).index("-Q") + 1]
              for cmd in entries.values() if cmd.startswith("tre worker")]
    assert sorted(queues) == sorted(QUEUES)
    assert all("--no-beat" in cmd for cmd in entries.values() if cmd.startswith("tre worker"))


# --- env.example ----------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    values = {}
    for line in (PRODUCTION / "env.example").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#"):
            line = line.lstrip("#").strip()
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line):
                continue
        if "=" in line:
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_env_example_documents_every_setting() -> None:
    missing = SETTING_NAMES - env_example().keys()
    assert not missing, f"add these settings to infra/production/env.example: {sorted(missing)}"
    assert {"TRE_MASTER_KEY", "TRE_BACKUP_PASSPHRASE"} <= env_example().keys()


def test_env_example_values_are_accepted_by_the_settings_and_hold_no_real_secret() -> None:
    values = env_example()
    settings = Settings.from_env({k: v for k, v in values.items() if k.startswith("TRE_")})
    assert settings.environment == "production"
    assert settings.public_url.startswith("https://") and settings.session_cookie_secure
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert not settings.is_sqlite and not settings.broker_needs_no_server
    for name in SECRET_VARIABLES:
        assert "REPLACE" in values[name], f"{name} must be a placeholder in env.example"


def test_env_example_explains_every_variable_in_a_comment_above_it_or_its_group() -> None:
    lines = (PRODUCTION / "env.example").read_text(encoding="utf-8").splitlines()
    variable = re.compile(r"#?[A-Z][A-Z0-9_]*=")
    for n, line in enumerate(lines):
        if variable.match(line):
            above = n - 1
            while above >= 0 and variable.match(lines[above]):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), f"{line.split('=')[0]} has no explanation above it"


# --- gunicorn -------------------------------------------------------------------------------------


@pytest.fixture
def gunicorn_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in [k for k in __import__("os").environ if k.startswith("TRE_")]:
        monkeypatch.delenv(name)
    metrics = tmp_path / "prometheus"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics))
    monkeypatch.setenv("TRE_INSTANCE_PATH", str(tmp_path / "instance"))
    return metrics


def test_gunicorn_config_binds_where_the_settings_say_with_workers_from_the_environment(
    gunicorn_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRE_HOST", "0.0.0.0")  # noqa: S104
    monkeypatch.setenv("TRE_PORT", "8000")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert conf["bind"] == ["0.0.0.0:8000"]
    assert conf["workers"] == 3
    assert conf["worker_class"] == "gthread" and conf["threads"] >= 1
    assert conf["preload_app"] is False


def test_gunicorn_config_defaults_to_one_worker_per_cpu_with_eight_threads(
    gunicorn_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    monkeypatch.delenv("GUNICORN_THREADS", raising=False)
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert conf["bind"] == ["127.0.0.1:5000"]
    assert conf["workers"] == conf["available_cpus"]()
    assert conf["threads"] == 8


def test_gunicorn_config_refuses_a_bad_worker_count(gunicorn_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    with pytest.raises(SystemExit, match="WEB_CONCURRENCY"):
        runpy.run_path(str(GUNICORN_CONF))


def test_gunicorn_config_makes_a_private_metrics_folder_when_none_is_given(
    gunicorn_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    runpy.run_path(str(GUNICORN_CONF))
    made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        assert made.is_dir() and made.name.startswith("tre-prometheus-")
    finally:
        shutil.rmtree(made, ignore_errors=True)


def test_gunicorn_worker_freezes_the_objects_of_the_loaded_app_out_of_garbage_collection(
    gunicorn_env: Path,
) -> None:
    import gc

    conf = runpy.run_path(str(GUNICORN_CONF))
    assert gc.get_freeze_count() == 0
    try:
        conf["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()  # what requests allocate is still collected
    finally:
        gc.unfreeze()


def test_gunicorn_start_empties_the_metrics_folder_and_a_dead_worker_is_marked(gunicorn_env: Path) -> None:
    conf = runpy.run_path(str(GUNICORN_CONF))
    gunicorn_env.mkdir()
    (gunicorn_env / "counter_99.db").write_bytes(b"old")
    conf["on_starting"](None)
    assert list(gunicorn_env.iterdir()) == []
    live = gunicorn_env / "gauge_livesum_4242.db"
    live.write_bytes(b"")
    other = gunicorn_env / "gauge_livesum_4343.db"
    other.write_bytes(b"")
    conf["child_exit"](None, type("Worker", (), {"pid": 4242})())
    assert not live.exists() and other.exists()


class _Response:
    status_code = 200
    status = "200 OK"
    sent = 1234
    headers = [("Content-Type", "text/html"), ("X-Request-Id", "abc123")]


def _access_line(conf: dict[str, Any], path: str, query: str) -> str:
    from gunicorn.config import Config

    cfg = Config()
    cfg.set("accesslog", "-")
    logger = conf["AccessLogger"](cfg)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.access_log.handlers = [handler]
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "RAW_URI": f"{path}?{query}"}
    logger.access(_Response(), None, environ, dt.timedelta(milliseconds=12.5))
    return stream.getvalue().strip()


def test_access_log_lines_are_json_without_the_query_string(
    gunicorn_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRE_LOG_FORMAT", "json")
    conf = runpy.run_path(str(GUNICORN_CONF))
    line = _access_line(conf, "/auth/reset", "token=very-secret-reset-token")
    record = json.loads(line)
    assert record["path"] == "/auth/reset" and record["status"] == 200
    assert record["request_id"] == "abc123" and record["duration_ms"] == 12.5
    assert "very-secret" not in line and "token" not in line


def test_access_log_lines_in_text_leave_out_the_query_string(
    gunicorn_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRE_LOG_FORMAT", "text")
    conf = runpy.run_path(str(GUNICORN_CONF))
    line = _access_line(conf, "/api/v1/me", "access_token=very-secret")
    assert line.startswith("GET /api/v1/me 200") and "very-secret" not in line


# --- the image ------------------------------------------------------------------------------------


def test_image_runs_as_the_user_and_from_the_folder_the_manifests_expect() -> None:
    dockerfile = (PRODUCTION / "Dockerfile").read_text(encoding="utf-8")
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\d+):(\d+)$", final_stage, re.M)
    assert user, "the image must name a numeric user, or runAsNonRoot cannot check it"
    workdir = re.search(r"^WORKDIR (\S+)$", final_stage, re.M)
    assert workdir
    for doc in workloads():
        ctx = pod_spec(doc)["securityContext"]
        assert (str(ctx["runAsUser"]), str(ctx["runAsGroup"])) == user.groups(), doc["metadata"]["name"]
    (web,) = containers(find("Deployment", "tre-web"))
    config = web["command"][web["command"].index("--config") + 1]
    assert config == f"{workdir.group(1)}/infra/production/gunicorn.conf.py"
    assert (REPO / config.removeprefix(workdir.group(1) + "/")).exists()
