"""Benchmark: the differencing audit of one new table against a project's ledger.

Run:  python -m benchmarks.differencing [--releases 100]

The ledger holds ``--releases`` count tables of one dataset, each a 3-way table (5 x 2 x 3 labels, one cell
suppressed) or a one-way table over a sub-population fixed by filters on two of its dimensions, so every
pair goes through the exact (joint table) audit. Times ``differencing_audit`` of one more table against all
of them. The last line printed is one JSON object (benchmark, value in seconds, per_pair, releases).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from disclosure.engine.ledger import ReleasedAggregate, ReleaseLedger, differencing_audit

ETH, SEX, AGE = ["asian", "black", "mixed", "white", "other"], ["F", "M"], ["0-17", "18-64", "65+"]


def _three_way(i: int, rng: np.random.Generator) -> ReleasedAggregate:
    cells = {(e, s, a): float(rng.integers(20, 400)) for e in ETH for s in SEX for a in AGE}
    hidden = (ETH[i % 5], SEX[i % 2], AGE[i % 3])
    cells.pop(hidden)
    return ReleasedAggregate(f"t{i}", {"dataset": "d", "filters": []}, ("eth", "sex", "age"), "count", cells, {hidden})


def _one_way(i: int, rng: np.random.Generator) -> ReleasedAggregate:
    filters = [{"column": "sex", "op": "==", "value": SEX[i % 2]}, {"column": "age", "op": "==", "value": AGE[i % 3]}]
    cells = {(e,): float(rng.integers(20, 400)) for e in ETH}
    cells[(None,)] = sum(cells.values())
    return ReleasedAggregate(f"o{i}", {"dataset": "d", "filters": filters}, ("eth",), "count", cells)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--releases", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    ledger = ReleaseLedger("p", [(_three_way if i % 2 else _one_way)(i, rng) for i in range(args.releases)])
    candidate = _three_way(args.releases + 1, rng)
    start = time.perf_counter()
    findings = differencing_audit(ledger, candidate)
    seconds = time.perf_counter() - start
    print(f"{args.releases} releases: {seconds:.3f} s, {len(findings)} finding(s)")
    print(
        json.dumps(
            {
                "benchmark": "differencing_audit",
                "value": round(seconds, 4),
                "per_pair": round(seconds / args.releases, 5),
                "releases": args.releases,
                "findings": len(findings),
            }
        )
    )


if __name__ == "__main__":
    main()
