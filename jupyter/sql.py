"""SQL over the project's extract, inside a workspace: DuckDB with one view per extract table.

Runs in the workspace runtime only (DuckDB and IPython live there, not in the control plane). DuckDB
reads the Parquet files where they lie, column by column and row group by row group, so a query over an
extract larger than memory streams instead of loading it; what it must spill goes to the home folder.

From Python::

    from jupyter.sql import connect
    con = connect()                      # views: one per table of the extract
    con.sql("select count(*) from patients").fetchall()

In a notebook (the runtime's IPython config loads this extension in every Python kernel)::

    %%sql
    select age_band, count(*) from patients group by 1

``%%sql name`` also keeps the result as the DataFrame ``name``. Results are the researcher's working
data: outputs still leave only through the output checker (``tre-submit``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_]")


def extract_tables(extract_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The extract's tables as ``{view name: DuckDB scan expression}``.

    A ``name.parquet`` or ``name.csv`` file is table ``name``; a folder of Parquet files (a partitioned
    table) is table ``folder``. Names are reduced to letters, digits and underscores.
    """
    root = Path(extract_dir or os.environ.get("TRE_EXTRACT_DIR") or Path.home() / "extract")
    tables: dict[str, str] = {}
    if not root.is_dir():
        return tables
    for entry in sorted(root.iterdir()):
        name = _SAFE_NAME.sub("_", entry.stem if entry.is_file() else entry.name)
        quoted = str(entry).replace("'", "''")
        if entry.is_file() and entry.suffix == ".parquet":
            tables[name] = f"read_parquet('{quoted}')"
        elif entry.is_file() and entry.suffix == ".csv":
            tables[name] = f"read_csv_auto('{quoted}')"
        elif entry.is_dir() and any(entry.rglob("*.parquet")):
            tables[name] = f"read_parquet('{quoted}/**/*.parquet', hive_partitioning = true)"
    return tables


def connect(extract_dir: str | os.PathLike[str] | None = None, **config: Any) -> Any:
    """An in-memory DuckDB connection with a view for each table of the extract."""
    import duckdb

    settings = {"temp_directory": str(Path.home() / ".duckdb-tmp"), **config}
    connection = duckdb.connect(":memory:", config=settings)
    for name, scan in extract_tables(extract_dir).items():
        # The name is letters, digits and underscores; the path's quotes are doubled (extract_tables).
        connection.execute(f'create view "{name}" as select * from {scan}')  # noqa: S608  # nosec B608 - name and path sanitised above
    return connection


class _Session:
    """The kernel's one connection, made on the first ``%%sql`` cell so a kernel that never runs SQL
    does not pay for importing DuckDB."""

    def __init__(self) -> None:
        self.connection: Any = None

    def run(self, query: str) -> Any:
        if self.connection is None:
            self.connection = connect()
        return self.connection.sql(query).df()


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%sql`` (and ``%sql`` for one line) with an IPython kernel."""
    session = _Session()

    def sql(line: str, cell: str | None = None) -> Any:
        if cell is None:
            return session.run(line)
        target = line.strip()
        result = session.run(cell)
        if target:
            if not target.isidentifier():
                raise ValueError(f"%%sql {target!r}: the result's name must be a Python identifier")
            ipython.user_ns[target] = result
        return result

    ipython.register_magic_function(sql, magic_kind="line_cell", magic_name="sql")
    ipython.user_ns.setdefault("sql_connect", connect)
