"""`tre demo generate` through click's runner: files written, summary printed, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tre.demo.cli import demo_cli


def test_generate_command_writes_tables_and_catalogue(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(demo_cli, ["generate", "--patients", "500", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("patients", "gp_events", "admissions", "prescriptions"):
        assert (out / f"{name}.parquet").is_file()
        assert name in result.output
    catalogue = json.loads((out / "datasets.json").read_text(encoding="utf-8"))
    assert catalogue["seed"] == 3
    assert catalogue["tables"][0]["rows"] == 500
    assert "500 patients, seed 3" in result.output


def test_generate_command_same_seed_same_bytes(tmp_path: Path) -> None:
    runner = CliRunner()
    for name in ("a", "b"):
        args = ["generate", "--patients", "300", "--out", str(tmp_path / name), "--no-progress"]
        assert runner.invoke(demo_cli, args).exit_code == 0
    for file in (tmp_path / "a").iterdir():
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes(), file.name


def test_generate_command_rejects_zero_patients(tmp_path: Path) -> None:
    result = CliRunner().invoke(demo_cli, ["generate", "--patients", "0", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_generate_command_requires_out(tmp_path: Path) -> None:
    result = CliRunner().invoke(demo_cli, ["generate", "--patients", "10"])
    assert result.exit_code == 2
    assert "--out" in result.output


def test_generate_command_rejects_more_than_capacity(tmp_path: Path) -> None:
    args = ["generate", "--patients", "999999999", "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(demo_cli, args)
    assert result.exit_code == 2
    assert "patients must be" in result.output
