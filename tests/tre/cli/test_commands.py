"""The ``tre`` command tree: every command the docs and the deployment files name is still there
after the split into tre/cli/ (one module per group), and shared plumbing answers in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tre.cli import main

# Commands named in README.md, docs/operations.md, the systemd units and the Kubernetes manifests.
DOCUMENTED = {
    "init", "doctor", "run", "worker", "beat", "backup", "restore", "backups now", "backups list",
    "backups drill", "audit verify", "db upgrade", "db current", "db downgrade", "db revision",
    "extract build", "extract status", "extract manifest", "optout load", "optout list", "keys rotate-master",
    "keys rotate-signing", "keys wrap-master", "users create-admin", "jobs sweep", "jobs selftest",
    "demo load", "demo code", "demo generate",
}


def _paths(command: click.Command, prefix: tuple[str, ...] = ()) -> set[str]:
    if isinstance(command, click.Group):
        return {p for name, sub in command.commands.items() for p in _paths(sub, (*prefix, name))}
    return {" ".join(prefix)}


def test_every_documented_command_is_in_the_tree() -> None:
    assert DOCUMENTED <= _paths(main), sorted(DOCUMENTED - _paths(main))


@pytest.mark.parametrize(("command", "option"), [
    ("extract build", "--as"), ("extract build", "--wait"), ("optout load", "--as"), ("optout load", "--dataset"),
    ("backup", "--with-master-key"), ("worker", "--concurrency"), ("worker", "-Q"), ("keys rotate-signing", "--retire"),
    ("extract manifest", "--optouts"),
])
def test_options_kept_their_names(command: str, option: str) -> None:
    cmd: click.Command = main
    for part in command.split():
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[part]
    assert any(option in p.opts for p in cmd.params), f"tre {command} lost {option}"


def test_an_unknown_account_for_as_is_one_line_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRE_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.delenv("TRE_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(main, ["init"]).exit_code == 0
    result = runner.invoke(main, ["extract", "build", "p1", "--as", "nobody@nhs.example", "--no-wait"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no account nobody@nhs.example"


def test_a_bad_setting_is_one_line_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRE_BACKUP_KEEP", "none")
    result = CliRunner().invoke(main, ["backups", "list"])
    assert result.exit_code == 1 and "TRE_BACKUP_KEEP must be of type int" in result.output
    assert "Traceback" not in result.output


def test_python_dash_m_tre_cli_runs_the_same_command() -> None:
    done = subprocess.run([sys.executable, "-m", "tre.cli", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and "backups" in done.stdout
