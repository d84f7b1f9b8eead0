"""``tre demo``: commands to make the demo's synthetic data (the lead attaches ``demo_cli`` to ``tre``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

_DEFAULT_PATIENTS = 100_000
_DEFAULT_SEED = 20261123
_DEFAULT_CHUNK = 100_000


@click.group("demo")
def demo_cli() -> None:
    """Synthetic data for demonstrations and benchmarks (no real patient is ever involved)."""


@demo_cli.command("generate")
@click.option("--patients", type=click.IntRange(min=1), default=_DEFAULT_PATIENTS, show_default=True,
              help="How many patients to make.")
@click.option("--seed", type=click.IntRange(min=0), default=_DEFAULT_SEED, show_default=True,
              help="Same seed and patient count, same bytes.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the Parquet files and datasets.json (created if missing).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=_DEFAULT_CHUNK, show_default=True,
              help="Patients held in memory at once; changes row groups, never values.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: only when stderr is a terminal).")
def generate_command(patients: int, seed: int, out_dir: Path, chunk_size: int, progress: bool | None) -> None:
    """Write patients, gp_events, admissions and prescriptions as Parquet, plus datasets.json."""
    from tre.demo import synthetic  # imported here so `tre --help` does not load numpy and pyarrow

    if progress is None:
        progress = sys.stderr.isatty()
    started = time.perf_counter()
    try:
        result = synthetic.generate(out_dir, patients=patients, seed=seed, chunk_size=chunk_size,
                                    progress=progress)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error
    seconds = time.perf_counter() - started
    for name, rows in result["rows"].items():
        click.echo(f"{name:<14} {rows:>12,} rows  {result['paths'][name]}")
    click.echo(f"{'datasets.json':<14} {'':>12}       {result['datasets_json']}")
    click.echo(f"{patients:,} patients, seed {seed}, in {seconds:.1f} s")


@demo_cli.command("omop")
@click.option("--persons", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=7, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the OMOP CDM v5.4 tables (CSV); put it in the landing folder to register it.")
def omop_command(persons: int, seed: int, out_dir: Path) -> None:
    """Write a synthetic OMOP CDM v5.4 folder (person, visits, conditions, drugs, measurements)."""
    from tre.demo.omop import write_omop_folder

    for table, rows in write_omop_folder(out_dir, persons=persons, seed=seed).items():
        click.echo(f"{table:<22} {rows:>8,} rows")
