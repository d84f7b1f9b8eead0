"""Synthetic inputs for the benchmarks, made with vectorised numpy (no per-row Python)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_WEIGHTS = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2], dtype=np.int64)


def nhs_numbers(count: int, seed: int = 0) -> pa.Array:
    """``count`` valid NHS numbers as ten-character strings (random, so a few repeat)."""
    rng = np.random.default_rng(seed)
    out = np.empty(0, dtype=np.int64)
    while len(out) < count:
        nine = rng.integers(400_000_000, 999_999_999, int((count - len(out)) * 1.15) + 16)
        digits = (nine[:, None] // 10 ** np.arange(8, -1, -1)) % 10
        check = 11 - (digits @ _WEIGHTS) % 11
        check[check == 11] = 0
        keep = check != 10  # nine digits whose check digit would be 10 can never be valid
        out = np.concatenate([out, nine[keep] * 10 + check[keep]])
    return pc.cast(pa.array(out[:count]), pa.string())


_AREAS = ["LS", "M", "B", "SW1A", "CR", "NE", "BS", "L", "S", "G", "EH", "CF", "OX", "CB", "YO"]


def _postcodes(count: int, rng: np.random.Generator) -> pa.Array:
    """Postcodes drawn from a pool of a few thousand, as real addresses cluster."""
    letters = np.array(list("ABDEFGHJLNPQRSTUWXYZ"))
    pool = []
    for i in range(3000):
        outward = f"{_AREAS[i % len(_AREAS)]}{1 + (i // len(_AREAS)) % 20}"
        pool.append(f"{outward} {i % 10}{letters[i % 20]}{letters[(i * 7) % 20]}")
    return pa.array(pool).take(pa.array(rng.integers(0, len(pool), count)))


def events_table(rows: int, seed: int = 0) -> pa.Table:
    """An event table: each patient appears on about four rows."""
    rng = np.random.default_rng(seed)
    patients = max(1, rows // 4)
    people = nhs_numbers(patients, seed)
    who = pa.array(rng.integers(0, patients, rows))
    births = pa.array(rng.integers(-25_000, 19_000, patients).astype("int32")).cast(pa.date32())
    codes = pa.array(["I10", "E11.9", "J45.0", "C50.9", "F32.1", "M54.5", "N39.0", "K21.9"])
    return pa.table(
        {
            "nhs_number": people.take(who),
            "date_of_birth": births.take(who),
            "postcode": _postcodes(rows, rng),
            "sex": pa.array(np.where(rng.random(rows) < 0.5, "F", "M")),
            "event_date": pa.array(rng.integers(17_000, 20_000, rows).astype("int32")).cast(pa.date32()),
            "code": codes.take(pa.array(rng.integers(0, len(codes), rows))),
            "value": pa.array(rng.normal(50, 10, rows)),
        }
    )


def write_events(path, rows: int, row_group_rows: int = 1_000_000, seed: int = 0) -> None:
    """Write the event table a row group at a time, so making 10 M rows needs little memory."""
    writer = None
    try:
        for start in range(0, rows, row_group_rows):
            part = events_table(min(row_group_rows, rows - start), seed + start)
            if writer is None:
                writer = pq.ParquetWriter(path, part.schema)
            writer.write_table(part)
    finally:
        if writer is not None:
            writer.close()
