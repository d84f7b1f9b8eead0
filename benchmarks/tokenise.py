"""Benchmark: per-project tokenisation of NHS numbers on one core, against two baselines in the same run.

Run:  python -m benchmarks.tokenise [--n 10000000] [--hmac-sample 500000] [--repeat 3]

Times ``pseudonymisation.tokens.tokenise`` (both layers: NHS-number strings in, project tokens out)
on a column of valid NHS numbers, with the process pinned to one CPU and every thread pool set to
one thread. Compared with:

- a plain Python loop of ``hmac.new(key, value, sha256).hexdigest()``, timed on a sample of
  ``--hmac-sample`` values and extrapolated as a rate (the loop's cost per value is flat);
- ``openssl speed`` on the same core for the primitive we use (AES-256-ECB, one call per 16-byte
  block, and in bulk) and, for reference, HMAC-SHA256 of 16-byte messages. A token costs two AES
  blocks (one per layer), so the AES limits are halved to give tokens per second.

The last line printed is one JSON object (benchmark, value, baseline, ratio, target, ...).
"""

from __future__ import annotations

import os

# One core means one thread everywhere, set before numpy or pyarrow start their pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import pyarrow as pa  # noqa: E402

from benchmarks._data import nhs_numbers  # noqa: E402
from pseudonymisation import tokens  # noqa: E402

TARGET_RATE = 5_000_000
TARGET_VS_LOOP = 15.0


def pin_to_one_core() -> int | None:
    """Pin this process (and the openssl children it starts) to one CPU; returns which, if any."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    return cpu


def openssl_rate(args: list[str], seconds: int, unit_bytes: int = 16) -> float | None:
    """Units (16-byte blocks or messages) per second from ``openssl speed -mr``, whose +F line
    gives bytes per second."""
    if shutil.which("openssl") is None:
        return None
    done = subprocess.run(
        ["openssl", "speed", "-mr", "-seconds", str(seconds), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"^\+F:\d+:[^:]+:([0-9.]+)", done.stdout, re.MULTILINE)
    return float(match.group(1)) / unit_bytes if match else None


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result). On a shared machine other processes
    take turns on our core: CPU time is what the work itself cost, wall time what we waited."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def hmac_loop(values: list[bytes], key: bytes) -> None:
    for value in values:
        hmac.new(key, value, hashlib.sha256).hexdigest()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="NHS numbers to tokenise")
    parser.add_argument("--hmac-sample", type=int, default=500_000, help="values timed in the Python loop")
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours; the best is reported")
    parser.add_argument("--openssl-seconds", type=int, default=1)
    args = parser.parse_args(argv)

    core = pin_to_one_core()
    load = [round(x, 2) for x in os.getloadavg()]
    numbers = nhs_numbers(args.n, seed=7)
    linkage_key, project_key = tokens.generate_key(), tokens.generate_key()

    runs = []
    for _ in range(args.repeat):
        result = None  # free the last run's tokens first, as a pipeline frees each chunk's
        wall, cpu_seconds, result = timed(lambda: tokens.tokenise(numbers, linkage_key, project_key))
        runs.append((wall, cpu_seconds))
        assert len(result) == args.n and result.null_count == 0
    ours = args.n / min(c for _, c in runs)
    ours_wall = args.n / min(w for w, _ in runs)

    sample = [v.encode() for v in numbers.slice(0, min(args.hmac_sample, args.n)).to_pylist()]
    loop_wall, loop_cpu, _ = timed(lambda: hmac_loop(sample, project_key))
    loop, loop_by_wall = len(sample) / loop_cpu, len(sample) / loop_wall

    aes_call = openssl_rate(["-bytes", "16", "-evp", "aes-256-ecb"], args.openssl_seconds)
    aes_bulk = openssl_rate(["-bytes", "16384", "-evp", "aes-256-ecb"], args.openssl_seconds)
    hmac_c = openssl_rate(["-bytes", "16", "-hmac", "sha256"], args.openssl_seconds)

    print(f"load average before the runs: {load}")
    print(f"tokens (both layers), {args.n:,} values, one core (cpu {core}): {ours / 1e6:.2f} M/s of CPU time")
    pairs = [(round(w, 3), round(c, 3)) for w, c in runs]
    print(f"  wall-clock: {ours_wall / 1e6:.2f} M/s; runs (wall s, cpu s): {pairs}")
    print(f"python hmac-sha256 hexdigest loop, {len(sample):,} values, extrapolated: {loop / 1e6:.3f} M/s CPU")
    for label, rate in (("16-byte calls", aes_call), ("16 KiB calls", aes_bulk)):
        if rate:
            print(f"openssl AES-256-ECB, {label}: {rate / 1e6:.1f} M blocks/s = {rate / 2e6:.1f} M tokens/s")
    if hmac_c:
        print(f"openssl HMAC-SHA256, 16-byte messages: {hmac_c / 1e6:.2f} M/s")

    summary = {
        "benchmark": "tokenise_nhs_numbers_one_core",
        "unit": "tokens per second of process CPU time (one core); wall-clock figures alongside",
        "n": args.n,
        "value": round(ours),
        "baseline": round(loop),
        "baseline_name": "python loop of hmac.new(key, value, sha256).hexdigest(), extrapolated from sample",
        "hmac_sample": len(sample),
        "value_wall_clock": round(ours_wall),
        "baseline_wall_clock": round(loop_by_wall),
        "ratio_wall_clock": round(ours_wall / loop_by_wall, 2),
        "load_average": load,
        "ratio": round(ours / loop, 2),
        "target": {"value": TARGET_RATE, "ratio": TARGET_VS_LOOP},
        "meets_target": ours >= TARGET_RATE and ours / loop >= TARGET_VS_LOOP,
        "primitive": "AES-256 (one block per layer, two per token), via cryptography over whole columns",
        "openssl_aes256_ecb_16B_tokens_per_s": round(aes_call / 2) if aes_call else None,
        "openssl_aes256_ecb_bulk_tokens_per_s": round(aes_bulk / 2) if aes_bulk else None,
        "openssl_hmac_sha256_16B_per_s": round(hmac_c) if hmac_c else None,
        "openssl_16B_limit_over_ours": round(aes_call / 2 / ours, 2) if aes_call else None,
        "openssl_hmac_limit_over_ours": round(hmac_c / ours, 2) if hmac_c else None,
        "core": core,
        "openssl_timing": "openssl speed divides by user CPU time by default, like our value",
        "runs_wall_cpu_seconds": [[round(w, 3), round(c, 3)] for w, c in runs],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
