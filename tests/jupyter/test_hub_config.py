"""The hub's configuration: loopback only, our plug-ins, no researcher tokens, secrets kept private."""

from __future__ import annotations

import os

import pytest
from traitlets.config import Config

from jupyter import sandbox
from jupyter.hub_config import HubSettings, configure, secret_from_file


def test_hub_binds_loopback_with_our_plugins_and_restricted_roles(tmp_path):
    c = Config()
    settings = HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "state"), "TRE_HUB_PORT": "8123"})

    configure(c, settings)

    assert c.JupyterHub.bind_url == "http://127.0.0.1:8123"
    assert c.JupyterHub.hub_bind_url.startswith("http://127.0.0.1:")
    assert c.JupyterHub.authenticator_class == "jupyter.authenticator.TreAuthenticator"
    assert c.JupyterHub.spawner_class == "jupyter.spawner.TreLocalSpawner"
    assert c.JupyterHub.allow_named_servers is True
    user_role = next(role for role in c.JupyterHub.load_roles if role["name"] == "user")
    assert "self" not in user_role["scopes"]
    assert not any(scope.startswith(("tokens", "shares", "users:shares")) for scope in user_role["scopes"])
    services = {service["name"] for service in c.JupyterHub.services}
    assert services == {"tre-control-plane", "idle-culler"}
    assert os.stat(tmp_path / "state").st_mode & 0o777 == 0o700


def test_secrets_are_created_private_and_refused_when_readable(tmp_path):
    secret = secret_from_file(tmp_path / "s")

    assert len(secret) == 64
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o600
    (tmp_path / "s").chmod(0o644)
    with pytest.raises(PermissionError):
        secret_from_file(tmp_path / "s")


def test_insecure_dev_is_off_unless_asked(tmp_path):
    assert HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path)}).insecure_dev is False
    assert HubSettings.from_env(
        {"TRE_HUB_STATE_DIR": str(tmp_path), "TRE_HUB_INSECURE_DEV": "1"}
    ).insecure_dev


def test_project_group_names_fit_and_stay_distinct():
    long_a, long_b = "a" * 40 + "1", "a" * 40 + "2"

    assert sandbox.project_group_name("PROJ1") == "tre-p-proj1"
    assert len(sandbox.project_group_name(long_a)) <= 32
    assert sandbox.project_group_name(long_a) != sandbox.project_group_name(long_b)


@pytest.mark.parametrize(
    ("prefix", "pool"), [("toolongname", "10.0.0.0/24"), ("tre", "10.0.0.0/30"), ("Tre", "10.0.0.0/24")]
)
def test_egress_plan_rejects_unusable_names_and_pools(prefix, pool):
    with pytest.raises(sandbox.SandboxError):
        sandbox.EgressPlan(prefix=prefix, pool=pool, ports=(8081,))


def test_two_instances_on_one_machine_get_their_own_ports_and_egress_names(tmp_path):
    first = HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "a" / "jupyterhub")})
    second = HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "b" / "jupyterhub"), "TRE_HUB_PORT": "9000"})

    assert (first.port, first.hub_port, first.proxy_api_port) == (8000, 8081, 8001)
    assert (second.port, second.hub_port, second.proxy_api_port) == (9000, 9081, 9001)
    assert first.egress_prefix != second.egress_prefix
    assert sandbox.EgressPlan(prefix=first.egress_prefix, pool="10.0.0.0/24", ports=(1,)).table.endswith("_workspaces")
    c = Config()
    configure(c, second)
    assert c.JupyterHub.hub_bind_url == "http://127.0.0.1:9081"
    assert c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:9001"
    assert c.TreLocalSpawner.egress_prefix == second.egress_prefix


def test_ports_and_egress_prefix_set_explicitly_win(tmp_path):
    settings = HubSettings.from_env(
        {
            "TRE_HUB_STATE_DIR": str(tmp_path),
            "TRE_HUB_API_PORT": "7001",
            "TRE_HUB_PROXY_API_PORT": "7002",
            "TRE_HUB_EGRESS_PREFIX": "tre",
        }
    )

    assert (settings.hub_port, settings.proxy_api_port, settings.egress_prefix) == (7001, 7002, "tre")


def test_the_file_system_sandbox_is_on_unless_switched_off(tmp_path):
    on, off = Config(), Config()
    configure(on, HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "a")}))
    configure(off, HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "b"), "TRE_HUB_FS_SANDBOX": "off"}))

    assert on.TreLocalSpawner.fs_sandbox is True
    assert off.TreLocalSpawner.fs_sandbox is False


def test_the_spawner_polls_for_a_starting_server_unless_told_not_to(tmp_path):
    fast, hubs_own = Config(), Config()
    configure(fast, HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "a")}))
    configure(hubs_own, HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "b"),
                                              "TRE_HUB_READY_POLL_SECONDS": "0"}))

    assert 0 < fast.TreLocalSpawner.ready_poll_seconds <= 0.1
    assert hubs_own.TreLocalSpawner.ready_poll_seconds == 0


def test_a_starting_server_gets_a_larger_cpu_share_unless_told_not_to(tmp_path):
    raised, equal = Config(), Config()
    configure(raised, HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "a")}))
    configure(equal, HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "b"), "TRE_HUB_START_NICE": "0"}))

    assert raised.TreLocalSpawner.start_nice < 0
    assert equal.TreLocalSpawner.start_nice == 0


def test_the_culler_carries_the_instance_path_tre_run_sweeps_by_only_when_there_is_one(tmp_path):
    run_by_tre, alone = Config(), Config()
    configure(run_by_tre, HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "a"),
                                                "TRE_INSTANCE_PATH": str(tmp_path / "instance")}))
    configure(alone, HubSettings.from_env({"TRE_HUB_STATE_DIR": str(tmp_path / "b")}))

    def culler(c):
        return next(s for s in c.JupyterHub.services if s["name"] == "idle-culler")

    assert culler(run_by_tre)["environment"] == {"TRE_INSTANCE_PATH": str(tmp_path / "instance")}
    assert "environment" not in culler(alone)
