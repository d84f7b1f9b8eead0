"""The extract's tables as DuckDB sees them (jupyter/sql.py); DuckDB itself runs in the workspace tests."""

from __future__ import annotations

from pathlib import Path

from jupyter.sql import extract_tables


def test_extract_tables_names_parquet_csv_and_partitioned_folders(tmp_path: Path):
    (tmp_path / "patients.parquet").write_bytes(b"")
    (tmp_path / "gp events.csv").write_text("a\n")
    (tmp_path / "admissions" / "year=2024").mkdir(parents=True)
    (tmp_path / "admissions" / "year=2024" / "part-0.parquet").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")

    tables = extract_tables(tmp_path)

    assert tables == {
        "admissions": f"read_parquet('{tmp_path}/admissions/**/*.parquet', hive_partitioning = true)",
        "gp_events": f"read_csv_auto('{tmp_path}/gp events.csv')",
        "patients": f"read_parquet('{tmp_path}/patients.parquet')",
    }


def test_extract_tables_doubles_a_quote_in_the_path_so_it_cannot_end_the_sql_string(tmp_path: Path):
    folder = tmp_path / "o'brien"
    folder.mkdir()
    (folder / "t.parquet").write_bytes(b"")

    assert extract_tables(folder) == {"t": f"read_parquet('{tmp_path}/o''brien/t.parquet')"}


def test_extract_tables_reads_the_workspace_extract_variable_and_a_missing_folder_is_empty(tmp_path, monkeypatch):
    (tmp_path / "x.parquet").write_bytes(b"")
    monkeypatch.setenv("TRE_EXTRACT_DIR", str(tmp_path))

    assert list(extract_tables()) == ["x"]
    assert extract_tables(tmp_path / "absent") == {}
