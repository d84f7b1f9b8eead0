"""Workspace network slots: a slot whose addresses another interface already routes is never taken."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from jupyter import sandbox


def test_host_routes_reads_the_kernels_table_of_destinations_and_masks(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "t36e2h1\t0400EE0A\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n"
    )

    assert [str(net) for net in sandbox.host_routes(table)] == ["0.0.0.0/0", "10.238.0.4/30"]


@pytest.mark.skipif(os.geteuid() != 0, reason="adding a network interface needs root")
def test_a_slot_another_hubs_leftover_interface_routes_is_skipped() -> None:
    # A hub killed before it cleaned up leaves its veth (another prefix) holding the pool's first
    # slot; a workspace given that slot would send its traffic to the dead hub's interface.
    plan = sandbox.EgressPlan(prefix="tslt", pool="10.239.77.0/24", ports=(8081,))
    stale = "tstaleh1"
    subprocess.run(["ip", "link", "add", stale, "type", "veth", "peer", "name", "tstalew1"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.239.77.5/30", "dev", stale], check=True)
        subprocess.run(["ip", "link", "set", stale, "up"], check=True)

        slot, host_ip, workspace_ip = sandbox.allocate_slot(plan)
    finally:
        subprocess.run(["ip", "link", "delete", stale], check=True)

    assert (slot, host_ip, workspace_ip) == (2, "10.239.77.9", "10.239.77.10")
    assert sandbox.allocate_slot(plan) == (1, "10.239.77.5", "10.239.77.6")  # free again once it is gone
