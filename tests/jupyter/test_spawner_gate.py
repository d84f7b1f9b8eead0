"""Every start asks the access gate; refusals are clear; a server stays bound to its project."""

from __future__ import annotations

import asyncio
import os
import types

import pytest
from jupyterhub.objects import Hub

from jupyter import spawner as spawner_module
from jupyter.controlplane import ControlPlaneUnavailable, WorkspaceRefused
from jupyter.spawner import TreLocalSpawner
from tests.jupyter.fake_control_plane import FakeControlPlane

GRANT = {
    "extract_path": "/srv/extracts/proj1",
    "outputs_path": "/srv/outputs/u-1-proj1",
    "unix_user": "tre-u1-proj1",
    "env": {"TRE_PROJECT_ID": "PROJ1", "TRE_OUTPUT_TOKEN": "tok", "TRE_OUTPUT_API": "http://127.0.0.1:5000"},
}


def make_spawner(fake: FakeControlPlane, token_file, server_name: str = "proj1") -> TreLocalSpawner:
    spawner = TreLocalSpawner(
        user=types.SimpleNamespace(name="u-1", url="/user/u-1/"),
        orm_spawner=types.SimpleNamespace(name=server_name, server=None),
        hub=Hub(base_url="/hub/", ip="127.0.0.1", port=18081),
    )
    spawner.control_plane.url = fake.url
    spawner.control_plane.service_token_file = str(token_file)
    return spawner


def test_allowed_start_takes_the_gate_answer(fake_cp, service_token_file):
    fake_cp.allow("u-1", "PROJ1", **GRANT)
    spawner = make_spawner(fake_cp, service_token_file)

    grant = asyncio.run(spawner.tre_authorise())

    assert grant.unix_user == "tre-u1-proj1"
    assert fake_cp.gate_calls() == [{"username": "u-1", "server_name": "proj1"}]
    assert spawner.tre_env() == {
        **GRANT["env"],
        "TRE_EXTRACT_DIR": "/srv/extracts/proj1",
        "TRE_OUTPUTS_DIR": "/srv/outputs/u-1-proj1",
        "TRE_PROJECT_NAME": "PROJ1",  # the gate's name for it when it sends one
        "TRE_PROJECT_URL": f"{fake_cp.url}/projects/PROJ1",
    }


def test_refusal_carries_the_gate_reason(fake_cp, service_token_file):
    fake_cp.refuse("u-1", "proj1", "the project is suspended")

    with pytest.raises(WorkspaceRefused) as refused:
        asyncio.run(make_spawner(fake_cp, service_token_file).tre_authorise())

    assert refused.value.jupyterhub_message == "You cannot open this workspace now: the project is suspended"


def test_every_start_asks_again(fake_cp, service_token_file):
    fake_cp.allow("u-1", "PROJ1", **GRANT)
    spawner = make_spawner(fake_cp, service_token_file)
    asyncio.run(spawner.tre_authorise())
    fake_cp.refuse("u-1", "proj1", "training has lapsed")

    with pytest.raises(WorkspaceRefused, match="training has lapsed"):
        asyncio.run(spawner.tre_authorise())

    assert len(fake_cp.gate_calls()) == 2


def test_default_server_is_refused_without_asking(fake_cp, service_token_file):
    with pytest.raises(WorkspaceRefused, match="open yours from the project page"):
        asyncio.run(make_spawner(fake_cp, service_token_file, server_name="").tre_authorise())

    assert fake_cp.gate_calls() == []


def test_server_renamed_since_first_start_is_refused(fake_cp, service_token_file):
    fake_cp.allow("u-1", "PROJ2", **GRANT)
    spawner = make_spawner(fake_cp, service_token_file, server_name="proj2")
    spawner.load_state({"tre": {"bound_server": "proj1"}})

    with pytest.raises(WorkspaceRefused, match="created for 'proj1'"):
        asyncio.run(spawner.tre_authorise())


def test_binding_survives_stop(fake_cp, service_token_file):
    fake_cp.allow("u-1", "PROJ1", **GRANT)
    spawner = make_spawner(fake_cp, service_token_file)
    asyncio.run(spawner.tre_authorise())

    spawner.clear_state()

    assert spawner.get_state()["tre"]["bound_server"] == "proj1"


def test_rename_is_refused(fake_cp, service_token_file):
    with pytest.raises(WorkspaceRefused, match="cannot be renamed"):
        asyncio.run(make_spawner(fake_cp, service_token_file).rename("proj1", "proj2"))


def test_gate_answering_for_another_project_is_refused(fake_cp, service_token_file):
    fake_cp.grants[("u-1", "proj1")] = {"allowed": True, "project_id": "PROJ9", **GRANT}

    with pytest.raises(WorkspaceRefused, match="different project"):
        asyncio.run(make_spawner(fake_cp, service_token_file).tre_authorise())


@pytest.mark.parametrize(
    "override",
    [
        {"env": {"LD_PRELOAD": "/tmp/x.so"}},
        {"env": {"JUPYTERHUB_API_TOKEN": "x"}},
        {"extract_path": "relative/path"},
        {"extract_path": "/srv/../etc"},
        {"unix_user": "root:x"},
        {"unix_user": None},
    ],
)
def test_malformed_grant_fails_closed(fake_cp, service_token_file, override):
    fake_cp.allow("u-1", "PROJ1", **{**GRANT, **override})

    with pytest.raises(ControlPlaneUnavailable):
        asyncio.run(make_spawner(fake_cp, service_token_file).tre_authorise())


def test_unreachable_gate_fails_closed(service_token_file):
    spawner = make_spawner(types.SimpleNamespace(url="http://127.0.0.1:9"), service_token_file)

    with pytest.raises(ControlPlaneUnavailable):
        asyncio.run(spawner.tre_authorise())


def test_without_root_start_is_refused_unless_insecure_dev(fake_cp, service_token_file, monkeypatch):
    fake_cp.allow("u-1", "PROJ1", **GRANT)
    monkeypatch.setattr(spawner_module.os, "geteuid", lambda: 1000)
    spawner = make_spawner(fake_cp, service_token_file)

    with pytest.raises(WorkspaceRefused, match="not configured securely"):
        asyncio.run(spawner.start())


def test_env_points_loopback_urls_through_the_veth(fake_cp, service_token_file):
    fake_cp.allow("u-1", "PROJ1", **GRANT)
    spawner = make_spawner(fake_cp, service_token_file)
    asyncio.run(spawner.tre_authorise())
    spawner.egress = spawner_module.sandbox.Egress("tre-x", "treh1", "10.231.0.5", "10.231.0.6")
    spawner.api_token = "hub-token"

    env = spawner.get_env()

    assert env["TRE_OUTPUT_API"] == "http://10.231.0.5:5000"
    assert env["JUPYTERHUB_API_URL"] == "http://10.231.0.5:18081/hub/api"
    assert env["PATH"].startswith("/opt/tre-workspace/bin:")
    assert "PYTHONPATH" not in env


def test_start_is_refused_when_bubblewrap_is_missing(fake_cp, service_token_file):
    fake_cp.allow("u-1", "PROJ1", **GRANT)
    spawner = make_spawner(fake_cp, service_token_file)
    spawner.bwrap_path = "/nonexistent/bwrap"
    spawner.account = spawner_module.sandbox.Account("tre-u1-proj1", 1234, 1234, "/srv/homes/tre-u1-proj1")
    grant = asyncio.run(spawner.tre_authorise())

    with pytest.raises(WorkspaceRefused) as refused:
        spawner._wrap_in_sandbox(grant)

    assert refused.value.status_code == 503
    assert spawner.cmd == [f"{spawner.runtime_prefix}/bin/jupyterhub-singleuser"]  # nothing ran unwrapped


def test_the_single_user_command_runs_inside_bubblewrap(fake_cp, service_token_file, tmp_path, monkeypatch):
    fake_cp.allow("u-1", "PROJ1", **GRANT)
    spawner = make_spawner(fake_cp, service_token_file)
    bwrap = tmp_path / "bwrap"
    bwrap.write_text("#!/bin/sh\n")
    bwrap.chmod(0o755)
    spawner.bwrap_path = str(bwrap)
    spawner.account = spawner_module.sandbox.Account("tre-u1-proj1", 1234, 1234, "/srv/homes/tre-u1-proj1")
    monkeypatch.setattr(spawner_module.grp, "getgrnam", lambda name: types.SimpleNamespace(gr_gid=4321))
    grant = asyncio.run(spawner.tre_authorise())

    files = spawner._wrap_in_sandbox(grant)
    again = spawner._wrap_in_sandbox(grant)  # a restart wraps the plain command again, not the wrapped one
    try:
        singleuser = f"{spawner.runtime_prefix}/bin/jupyterhub-singleuser"
        assert spawner.cmd[0] == str(bwrap) and spawner.cmd[-2:] == ["--", singleuser]
        assert spawner.cmd.count(singleuser) == 1
        assert set(spawner.popen_kwargs["pass_fds"]) == set(again.values())
        assert set(files) == {"/etc/passwd", "/etc/group", "/etc/hosts", "/etc/hostname"}
        assert b"tre-u1-proj1:x:1234:1234" in os.read(again["/etc/passwd"], 4096)
    finally:
        for descriptor in [*files.values(), *again.values()]:
            os.close(descriptor)


def test_gate_answer_naming_a_system_group_is_refused(fake_cp, service_token_file):
    fake_cp.allow("u-1", "PROJ1", **GRANT, unix_group="sudo")

    with pytest.raises(ControlPlaneUnavailable):
        asyncio.run(make_spawner(fake_cp, service_token_file).tre_authorise())


def test_gate_answer_names_the_project_group_the_workspace_joins(fake_cp, service_token_file):
    fake_cp.allow("u-1", "PROJ1", **GRANT, unix_group="tre-p-proj1")
    without = dict(GRANT)
    grant = asyncio.run(make_spawner(fake_cp, service_token_file).tre_authorise())

    assert spawner_module.project_group(grant) == "tre-p-proj1"
    fake_cp.allow("u-1", "PROJ1", **without)
    derived = asyncio.run(make_spawner(fake_cp, service_token_file).tre_authorise())
    assert spawner_module.project_group(derived) == spawner_module.sandbox.project_group_name("PROJ1")
