"""A lost node costs nothing: a sweep on a Ray cluster of a head and two worker nodes (all on this machine, one
CPU per worker, none on the head), storage on an S3 bucket (moto's server on loopback), `launch --address`.
One worker node's processes are all SIGKILLed while its trial is mid-round, and that node's local disk (its
TMPDIR, where trials keep their local mirror) is deleted: the trial continues on the other node from its last
finished round. Then the driver is SIGKILLed and the sweep resumed with `--address` from the URI alone. Nothing
is lost, nothing duplicated: in the engine's rounds.jsonl, the ledger, Tune's results or W&B. All of it alone, and
with LTH_SWEEP_TEST_PACKED_NODE_LOSS=1 also packed two configs per trial (`search.pack: 2`) on a cluster of its
own (the first loses a node).

The same cluster first shows the multi-node guard: a local `--storage` folder is refused at once (exit 2).

The cluster is Ray's own test cluster (`ray.cluster_utils.Cluster`) under a private RAY_TMPDIR. Each worker
node is started with its own TMPDIR and a variable naming it (`LTH_SWEEP_TEST_NODE`), which its raylet and
every worker process it starts inherit: that is how the test finds exactly one node's processes to kill.
The fake AWS credentials reach the nodes through their environment (as an instance profile would on EC2),
never through Ray's runtime_env.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import sweep_helpers as h
from s3_server import CREDENTIALS, S3Server

from lth_sweep.sweep.packing import tune_trial_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROUNDS, NUM_SAMPLES, EPOCHS = 3, 2, 10  # 350 iterations per round: time enough to kill a trial mid-round
NODE_ENV = "LTH_SWEEP_TEST_NODE"
NAME = "lost-node"


class Nodes(NamedTuple):
    cluster: Any
    name_of: dict[str, str]  # Ray node id -> "w1" / "w2"
    tmp_of: dict[str, Path]  # node name -> its TMPDIR (the node's "local disk")
    node_of: dict[str, Any]  # node name -> the cluster's Node object


PACKED_ENV = "LTH_SWEEP_TEST_PACKED_NODE_LOSS"  # 1: also packed (~45 s more; left out of CI's ~15 min)


@pytest.fixture(scope="module", params=[1, pytest.param(2, marks=pytest.mark.skipif(
    not os.environ.get(PACKED_ENV), reason=f"packed node loss runs with {PACKED_ENV}=1"))], ids=["alone", "packed"])
def pack(request: pytest.FixtureRequest) -> int:
    """Configs per Tune trial (`search.pack`)."""
    return request.param


@pytest.fixture(scope="module")
def nodes(pack: int, ray_tmp: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """A cluster for each pack size: the node-loss run kills one of its nodes."""
    from ray.cluster_utils import Cluster

    disks = tmp_path_factory.mktemp("node_disks")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"RAY_TMPDIR": str(ray_tmp), h.MARKER_ENV: h.MARKER, "RAY_USAGE_STATS_ENABLED": "0",
                           **CREDENTIALS}.items():
            patch.setenv(key, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            name_of, tmp_of, node_of = {}, {}, {}
            for name in ("w1", "w2"):
                tmp_of[name] = disks / name
                tmp_of[name].mkdir()
                patch.setenv("TMPDIR", str(tmp_of[name]))
                patch.setenv(NODE_ENV, name)
                node_of[name] = cluster.add_node(num_cpus=1)
                name_of[node_of[name].node_id] = name
            patch.delenv("TMPDIR")
            patch.delenv(NODE_ENV)
            cluster.wait_for_nodes()
            yield Nodes(cluster, name_of, tmp_of, node_of)
        finally:
            if cluster is not None:
                cluster.shutdown()
            left = {pid: _cmdline(pid) for pid in h.our_processes()}
            h.kill_marked(wait=10)
    assert not left, f"processes of the test cluster were still running after shutdown: {left}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def node_processes(name: str) -> list[int]:
    """Every live process of worker node `name` (its raylet, agents, and the workers it started)."""
    return [pid for pid in h.our_processes() if f"{NODE_ENV}={name}".encode() in _environ(pid)]


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def kill_node(nodes: Nodes, name: str) -> list[int]:
    """SIGKILLs every process of the node at once, then drops the (dead) node from the cluster's books so
    that its shutdown does not wait for it."""
    pids = node_processes(name)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    nodes.cluster.remove_node(nodes.node_of[name], allow_graceful=False)
    return pids


# ------------------------------------------------------------------------------------ the guard


def test_local_storage_on_a_multi_node_cluster_is_refused(nodes: Nodes, tmp_path: Path, data_root: Path,
                                                         ray_tmp: Path) -> None:
    tree = h.sweep_tree(data_root, rounds=2, num_samples=1)
    sweep_file = h.write_sweep(tmp_path / "local.yaml", tree)
    result = h.run_cli("launch", sweep_file, "--storage", tmp_path / "storage", "--address", nodes.cluster.address,
                       cwd=tmp_path, env=h.cli_env(ray_tmp), timeout=120)
    assert result.returncode == 2, result.explain()
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("lth-sweep: error: --storage:") and "3 nodes" in message, result.explain()
    assert "s3://" in message and "gs://" in message and "--shared-storage" in message
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "storage").exists()  # nothing written, nothing launched


def test_resuming_a_local_sweep_on_a_multi_node_cluster_is_refused(nodes: Nodes, tmp_path: Path, data_root: Path,
                                                                  ray_tmp: Path) -> None:
    from lth_sweep.sweep.launch import prepare_launch
    from lth_sweep.sweep.schema import load_sweep
    from lth_sweep.sweep.spec import save_spec

    sweep_file = h.write_sweep(tmp_path / "local.yaml", h.sweep_tree(data_root, rounds=2, num_samples=1))
    spec = prepare_launch(*load_sweep(sweep_file), str(tmp_path / "storage"), None)
    save_spec(spec)  # a sweep launched on one machine, resumed on a cluster
    result = h.run_cli("resume", spec.experiment_dir, "--address", nodes.cluster.address, cwd=tmp_path,
                       env=h.cli_env(ray_tmp), timeout=120)
    assert result.returncode == 2, result.explain()
    assert result.stderr.strip().splitlines()[-1].startswith("lth-sweep: error: --storage:"), result.explain()
    assert os.listdir(spec.experiment_dir) == ["sweep.json"]


# ------------------------------------------------------------------------------------ the lost node


class NodeLoss(NamedTuple):
    uri: str
    base: Path
    env: dict[str, str]
    lost: str  # the node killed
    config_hash: str  # the trial it ran
    killed_after_round: int
    killed_pids: list[int]
    ledger_at_driver_kill: list[dict[str, Any]]
    resume: h.Result
    local: Path  # a copy of the sweep's folder in the bucket, after the resume
    timings: dict[str, float]


def seconds_per_round(entries: list[dict[str, Any]]) -> float:
    times = [e["time"] for e in entries]
    return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else float("nan")


@pytest.fixture(scope="module")
def node_loss(nodes: Nodes, pack: int, s3: S3Server, tmp_path_factory: pytest.TempPathFactory, data_root: Path,
              ray_tmp: Path) -> NodeLoss:
    base = tmp_path_factory.mktemp("node_loss")
    prefix = "nodeloss" if pack == 1 else "nodeloss-packed"
    tree = h.sweep_tree(data_root, epochs=EPOCHS, rounds=ROUNDS, num_samples=NUM_SAMPLES, max_concurrent=1)
    tree["search"]["pack"] = pack
    sweep_file = h.write_sweep(base / f"{NAME}.yaml", tree)
    env = h.cli_env(ray_tmp, **CREDENTIALS)
    uri = s3.uri(f"{prefix}/{NAME}")
    address = nodes.cluster.address
    timings: dict[str, float] = {}
    with h.started("launch", sweep_file, "--storage", s3.uri(prefix), "--address", address, cwd=base, env=env,
                   log_path=base / "launch.log") as proc:
        first = h.poll(lambda: h.ledger(uri) or proc.poll() is not None, timeout=300, interval=0.1,
                       what="a first round in the ledger")
        assert proc.poll() is None, (base / "launch.log").read_text()
        entry = first[-1]
        lost, config_hash = nodes.name_of[entry["node_id"]], entry["config_hash"]
        trial_id = tune_trial_of(entry["trial_id"])  # the lost Tune trial (a pack's ledger lines name its members)
        killed_pids = kill_node(nodes, lost)  # its trial is in round entry["round"] + 1 now
        killed_at = time.time()
        shutil.rmtree(nodes.tmp_of[lost] / "lth_sweep", ignore_errors=True)  # the node's disk is gone with it
        killed_after = max(e["round"] for e in h.ledger(uri) if e["config_hash"] == config_hash)

        def continued() -> list[dict[str, Any]]:  # the lost Tune trial's rounds since (a pack's: every member's)
            return [e for e in h.ledger(uri) if tune_trial_of(e["trial_id"]) == trial_id and e["time"] > killed_at]

        after = h.poll(lambda: continued() or proc.poll() is not None, timeout=300, interval=0.2,
                       what="the lost node's trial training again")
        assert proc.poll() is None, (base / "launch.log").read_text()
        timings["next_round_after_kill_s"] = after[0]["time"] - killed_at
        h.poll(lambda: len(h.ledger(uri)) >= ROUNDS + 1 or proc.poll() is not None, timeout=300, interval=0.1,
               what="the second trial part-way")
        assert proc.poll() is None, "the sweep ended before its driver could be killed"
        h.kill_group(proc.pid)  # the driver dies; the cluster lives on
        proc.wait(timeout=30)
        ledger_at_driver_kill = h.ledger(uri)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    resume = h.run_cli("resume", uri, "--address", address, cwd=elsewhere, env=env, timeout=300)
    (base / "resume.log").write_text(resume.explain())
    # the lost trial's rounds on its new node until the driver was killed, undisturbed: a round's normal length
    timings["seconds_per_round"] = seconds_per_round([e for e in ledger_at_driver_kill
                                                      if tune_trial_of(e["trial_id"]) == trial_id
                                                      and e["time"] > killed_at])
    timings["stall_s"] = timings["next_round_after_kill_s"] - timings["seconds_per_round"]
    print(f"\nnode loss: {json.dumps(timings)}")
    (base / "timings.json").write_text(json.dumps(timings))
    return NodeLoss(uri, base, env, lost, config_hash, killed_after, killed_pids, ledger_at_driver_kill, resume,
                    s3.download(f"{prefix}/{NAME}", base / "copy"), timings)


@pytest.fixture(scope="module")
def status(node_loss: NodeLoss) -> dict[str, Any]:
    assert node_loss.resume.returncode == 0, node_loss.resume.explain()
    return h.status_json(node_loss.uri, node_loss.base, node_loss.env)


def test_the_node_was_killed_mid_trial(node_loss: NodeLoss) -> None:
    assert node_loss.killed_pids
    assert 0 <= node_loss.killed_after_round < ROUNDS - 1
    assert not node_processes(node_loss.lost)


def test_the_trial_continued_on_the_other_node_from_its_last_round(node_loss: NodeLoss, nodes: Nodes) -> None:
    entries = [e for e in h.ledger(node_loss.uri) if e["config_hash"] == node_loss.config_hash]
    assert [e["round"] for e in entries] == list(range(ROUNDS))  # each round trained once, in order
    where = [nodes.name_of[e["node_id"]] for e in entries]
    cut = node_loss.killed_after_round + 1
    assert set(where[:cut]) == {node_loss.lost} and node_loss.lost not in where[cut:], where


def test_resume_after_the_driver_was_killed_finishes(node_loss: NodeLoss, status: dict[str, Any]) -> None:
    assert len(node_loss.ledger_at_driver_kill) < NUM_SAMPLES * ROUNDS
    assert f"everything is under {node_loss.uri}" in node_loss.resume.stdout
    assert status["counts"] == {"TERMINATED": NUM_SAMPLES}
    assert all(t["rounds_done"] == ROUNDS for t in status["trials"]), status["trials"]


def test_nothing_lost_nothing_duplicated(node_loss: NodeLoss, status: dict[str, Any]) -> None:
    ledger = h.ledger(node_loss.uri)
    pairs = Counter((e["config_hash"], e["round"]) for e in ledger)
    assert max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1]
    assert ledger[: len(node_loss.ledger_at_driver_kill)] == node_loss.ledger_at_driver_kill
    at_kill = Counter(e["config_hash"] for e in node_loss.ledger_at_driver_kill)
    for trial in status["trials"]:
        records = h.engine_rounds(node_loss.local, trial["config_hash"])
        assert [r["round"] for r in records] == list(range(ROUNDS)), trial
        # the ledger records a round once it is saved in the bucket: the only round it may lack is one
        # that was being saved when the driver was killed (saved, so not trained again)
        missing = {r for r in range(ROUNDS) if (trial["config_hash"], r) not in pairs}
        assert missing <= {at_kill[trial["config_hash"]]}, (trial, missing)
        # Tune's own results: every round; a trial that Tune's lagging snapshot (after the driver's SIGKILL)
        # still saw part-way reports its later rounds again, from the engine's state, without training them
        assert tune_rounds(node_loss.local, trial["trial_id"]) == list(range(ROUNDS)), trial


def tune_rounds(sweep_dir: Path, trial_id: str) -> list[int]:
    """The rounds in Tune's result.json for a trial, or for pack member `<tune trial>_<j>` (in its pack's results)."""
    alone = sweep_dir / f"trial_{trial_id}" / "result.json"
    if alone.exists():
        return sorted({r["round"] for r in h.read_jsonl(alone)})
    j = int(trial_id.rsplit("_", 1)[1])
    members = [r["members"][j] for r in h.read_jsonl(sweep_dir / f"trial_{tune_trial_of(trial_id)}" / "result.json")]
    return sorted({m["round"] for m in members if "round" in m})


def test_every_round_reached_wandb_once(node_loss: NodeLoss, status: dict[str, Any]) -> None:
    """The offline runs of the lost node were mirrored to the bucket; read in order as `wandb sync` does,
    every round of every trial is there exactly once."""
    for trial in status["trials"]:
        rounds = h.wandb_rounds(node_loss.local, trial["config_hash"])
        assert rounds == list(range(ROUNDS)), (trial["config_hash"], rounds)
