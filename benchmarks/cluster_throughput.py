"""Matrix cells per minute on a simulated cluster: Ray's own `Cluster` on this machine, a 0-CPU head and
1, then 2, worker nodes of one CPU each; the smoke config's cells that need no IRP chain or scorer (every
method but AutoS, two targets, `--seeds` seeds), run by `autosparse matrix` in a fresh workspace per size.
Cells per minute = cells / (last cell finished - first cell started), from the cells' own records.

    .venv/bin/python benchmarks/cluster_throughput.py [--nodes 1,2] [--seeds 2]
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from autosparse.orchestration.runtime import set_local_defaults
from autosparse.orchestration.store import MARKER

METHODS = "[random, magnitude, snip, grasp, synflow, random@alloc:erk, snip/iter3@alloc:synflow]"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cells_per_minute(nodes: int, seeds: int) -> tuple[int, float]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "dashboard_agent_listen_port": free_port()})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        with tempfile.TemporaryDirectory() as folder:
            workspace = Path(folder) / "ws"
            overrides = [f"matrix.methods={METHODS}", "matrix.irp_reference=false", "matrix.variants=[]",
                         "matrix.variant_methods=[snip]", f"matrix.seeds={list(range(seeds))}"]
            subprocess.run([sys.executable, "-m", "autosparse.cli", "matrix", "smoke", "--workspace", str(workspace),
                            "--ray-address", cluster.address, "--no-progress",
                            *[item for o in overrides for item in ("--set", o)]], check=True, stdout=subprocess.DEVNULL)
            records = [json.loads(marker.read_text()) for marker in (workspace / "cell").glob(f"*/{MARKER}")]
    finally:
        cluster.shutdown()
    span = max(r["finished"] for r in records) - min(r["started"] for r in records)
    return len(records), 60 * len(records) / span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,2", help="worker node counts to measure (one CPU each)")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    set_local_defaults()
    print("| worker nodes (1 CPU each) | cells | cells per minute |\n|---|---|---|")
    for nodes in map(int, args.nodes.split(",")):
        cells, rate = cells_per_minute(nodes, args.seeds)
        print(f"| {nodes} | {cells} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
