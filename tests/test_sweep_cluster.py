"""A sweep on a two-node Ray cluster (both nodes on this machine, one CPU each): `lth-sweep launch --address`
places its two concurrent one-CPU trials on different nodes.

The cluster is Ray's own test cluster (`ray.cluster_utils.Cluster`) started from the test process with
RAY_TMPDIR pointed at a private folder: Ray writes the cluster's address to `$RAY_TMPDIR/ray/
ray_current_cluster`, where a plain `ray.init()` looks, so with the default folder any other Ray user on
this machine would join it while it runs. `cluster.shutdown()` stops exactly its own nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sweep_helpers as h

from lth_sweep.sweep.launch import DRIVER_LOG

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROUNDS = 2


@pytest.fixture(scope="module")
def cluster(ray_tmp: Path) -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", str(ray_tmp))
        patch.setenv(h.MARKER_ENV, h.MARKER)  # the nodes' processes inherit it: clean-up can find them
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            yield cluster
        finally:
            if cluster is not None:
                cluster.shutdown()
            left = h.kill_marked(wait=10)
    assert not left, f"processes of the test cluster were still running after shutdown: {left}"


@pytest.fixture(scope="module")
def sweep(cluster: Any, tmp_path_factory: pytest.TempPathFactory, data_root: Path, ray_tmp: Path) -> h.Sweep:
    base = tmp_path_factory.mktemp("cluster")
    tree = h.sweep_tree(data_root, epochs=6, rounds=ROUNDS, num_samples=2, max_concurrent=2)
    sweep_file = h.write_sweep(base / "two_nodes.yaml", tree)
    env = h.cli_env(ray_tmp)
    # both nodes run on this machine, so the local folder is shared storage, and is declared so
    result = h.run_cli("launch", sweep_file, "--storage", base / "storage", "--shared-storage", "--address",
                       cluster.address, cwd=base, env=env, timeout=240)
    return h.Sweep(base / "storage" / "two_nodes", tree, result, base, env)


def test_cluster_has_two_nodes_of_one_cpu(cluster: Any) -> None:
    import ray

    nodes = cluster.list_all_nodes()
    assert len(nodes) == 2 and len({node.node_id for node in nodes}) == 2
    assert ray.is_initialized() is False  # the test process is not a driver; the sweep's launch is


def test_sweep_on_the_cluster_finishes(sweep: h.Sweep) -> None:
    assert sweep.launch.returncode == 0, sweep.launch.explain()
    log = (sweep.dir / DRIVER_LOG).read_text()  # Ray's own output
    assert "Started a local Ray instance" not in log and "Connecting to existing Ray cluster" in log


def test_the_two_trials_ran_on_different_nodes(sweep: h.Sweep, cluster: Any) -> None:
    assert sweep.launch.returncode == 0, sweep.launch.explain()
    trial_dirs = sorted(sweep.dir.glob("trial_*"))
    assert len(trial_dirs) == 2
    node_of = {}
    for trial_dir in trial_dirs:
        results = h.read_jsonl(trial_dir / "result.json")
        assert [r["round"] for r in results] == list(range(ROUNDS))
        nodes = {r["node_id"] for r in results}
        assert len(nodes) == 1, f"{trial_dir.name} moved between nodes: {nodes}"
        node_of[trial_dir.name] = nodes.pop()
    assert len(set(node_of.values())) == 2, node_of
    assert set(node_of.values()) == {node.node_id for node in cluster.list_all_nodes()}


def test_status_of_the_cluster_sweep(sweep: h.Sweep) -> None:
    assert sweep.launch.returncode == 0, sweep.launch.explain()
    status = h.status_json(sweep.dir, sweep.cwd, sweep.env)
    assert status["counts"] == {"TERMINATED": 2}
    assert all(row["rounds_done"] == ROUNDS for row in status["trials"])
    pairs = [(line["config_hash"], line["round"]) for line in h.ledger(sweep.dir)]
    assert sorted(pairs) == sorted((row["config_hash"], r) for row in status["trials"] for r in range(ROUNDS))
