"""A node without the storage's credentials: a Ray cluster on this machine (`ray.cluster_utils.Cluster`, a head
with no CPUs and one worker node started without the fake AWS credentials in its environment), storage on moto's
S3 server on loopback, `lth-sweep launch --address` from a driver that has them. Before, the trial trained its
first round and then failed in Tune's checkpoint upload with the SDK's message alone ("When creating key 'sw/' ...
ACCESS_DENIED"), three times; now it fails at its start with one line that names the node and what it lacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sweep_helpers as h
from s3_server import CREDENTIALS, S3Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster_without_credentials(ray_tmp: Path) -> Iterator[str]:
    """The cluster's address; its one worker node has no AWS credentials in its environment."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"RAY_TMPDIR": str(ray_tmp), h.MARKER_ENV: h.MARKER, "RAY_USAGE_STATS_ENABLED": "0"}.items():
            patch.setenv(key, value)
        for key in (*CREDENTIALS, "RAY_ADDRESS"):
            patch.delenv(key, raising=False)
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            yield cluster.address
        finally:
            if cluster is not None:
                cluster.shutdown()
            h.kill_marked(wait=10)


def test_a_trial_on_a_node_without_credentials_fails_at_once_saying_why(
        cluster_without_credentials: str, s3: S3Server, tmp_path: Path, data_root: Path, ray_tmp: Path) -> None:
    tree = h.sweep_tree(data_root, epochs=3, rounds=2, num_samples=1, max_concurrent=1, max_failures=0)
    sweep_file = h.write_sweep(tmp_path / "imp.yaml", tree)
    env = h.cli_env(ray_tmp, **CREDENTIALS)
    result = h.run_cli("launch", sweep_file, "--storage", s3.uri("no-credentials"), "--address",
                       cluster_without_credentials, cwd=tmp_path, env=env, timeout=240)
    assert result.returncode == 1, result.explain()
    (failed,) = [line for line in result.stdout.splitlines() if "failed for good" in line]
    assert "(RuntimeError: node " in failed and "cannot write the sweep's storage: give every node its credentials " \
        "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in failed and "ACCESS_DENIED" in failed, failed
    assert "0/2 rounds" in failed, "the trial trained no round before it failed"
