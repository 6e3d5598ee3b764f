"""Winning tickets (real torch, real engine; the sweep case on a real local Ray with W&B offline).

A `lth-sweep run` trial folder (2 stacked replicates, late rewinding) and the shared reference sweep are
exported with `lth-sweep ticket export`; each file is read back in a fresh interpreter that imports torch
alone, checked against the trial's own files (rewind.pt, rounds.jsonl), and retrained with
`lth-sweep run --ticket`, which must reproduce the round's recorded metrics bit for bit on the CPU.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sweep_helpers as h
import torch
from conftest import CliResult, main_here, read_rounds
from test_failures import tmpfs

from lth_sweep import storage
from lth_sweep.checkpoint import load_torch, save_torch
from lth_sweep.config import MODELS, ExperimentConfig, build_experiment, load_experiment
from lth_sweep.engine.data import DatasetSplits
from lth_sweep.engine.lottery import PER_REPLICATE_METRICS, Trial
from lth_sweep.engine.models import build_model
from lth_sweep.engine.population import Population
from lth_sweep.engine.pruning import density_by_kind
from lth_sweep.errors import UserError
from lth_sweep.report.tickets import Retraining, TrialSource, build_ticket, differences, export_ticket
from lth_sweep.sweep.schema import ObjectiveConfig, SweepConfig
from lth_sweep.sweep.spec import LaunchSpec, save_spec

REWIND = 15
ROUNDS = 3
COMPARED = ("round", "density", *PER_REPLICATE_METRICS)

CliRunner = Callable[..., CliResult]

# Runs in a fresh interpreter that imports only torch: a ticket must need nothing of lth_sweep to load.
PLAIN_LOAD = """
import json, sys, torch
t = torch.load(sys.argv[1], weights_only=True)
masks = {n: [str(m.dtype), m.numel(), int(m.sum())] for n, m in t["masks"].items()}
print(json.dumps({"keys": sorted(t), "masks": masks, "state_dict": sorted(t["state_dict"]), "record": t["record"],
                  "config": t["config"]}))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, make_config: Callable[..., ExperimentConfig],
            mnist1d: DatasetSplits) -> Path:
    """A finished 3-round trial with 2 stacked replicates and late rewinding (the fastest full IMP trial)."""
    out = tmp_path_factory.mktemp("trial")
    config = make_config({"replicates": 2, "rewind.iteration": REWIND, "prune.rounds": ROUNDS})
    Trial(config, out, data=mnist1d).run()
    return out


def export(run_cli: CliRunner, *args: str | Path) -> CliResult:
    return run_cli("ticket", "export", *args)


def assert_user_error(result: CliResult, *words: str) -> None:
    assert result.returncode == 2, result
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def recorded_values(record: dict[str, Any], replicate: int) -> dict[str, Any]:
    """One replicate's values of the compared metrics in a rounds.jsonl record."""
    per_replicate = record.get("per_replicate", {})
    return {k: per_replicate[k][replicate] if k in per_replicate else record[k] for k in COMPARED}


def plain_load(path: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_ticket_matches_trial(ticket_path: Path, engine_dir: Path, round_index: int, replicate: int,
                                data: DatasetSplits) -> dict[str, Any]:
    """The file loads with weights_only=True; masks are bool with the round's density; its state_dict loads into
    the zoo's model; pruned weights are zero and survivors are the trial's rewind weights; the record is the
    round's (this replicate's values)."""
    ticket = torch.load(ticket_path, weights_only=True)
    assert {"state_dict", "masks", "config", "record"} <= set(ticket)
    assert all(m.dtype == torch.bool for m in ticket["masks"].values())
    record = read_rounds(engine_dir)[round_index]
    alive = sum(int(m.sum()) for m in ticket["masks"].values())
    total = sum(m.numel() for m in ticket["masks"].values())
    assert alive / total == pytest.approx(record["density"], abs=1e-12)
    assert {k: ticket["record"][k] for k in COMPARED} == recorded_values(record, replicate)
    config = build_experiment(ticket["config"])
    model = build_model(config.model, data.input_shape, data.num_classes)
    model.load_state_dict(ticket["state_dict"])  # strict: the zoo's names, every parameter and buffer
    rewind = load_torch(engine_dir / "rewind.pt")
    params = dict(model.named_parameters())
    assert set(ticket["masks"]) == set(model.prunable_kinds())
    assert (alive < total) == (round_index > 0)
    for name, mask in ticket["masks"].items():
        weight = params[name].detach()
        assert (weight[~mask] == 0).all(), f"{name}: a pruned weight is not zero"
        assert torch.equal(weight[mask], rewind[name][replicate][mask]), f"{name}: survivors are not the rewind point"
    for name, tensor in ticket["state_dict"].items():
        if name not in ticket["masks"]:
            assert torch.equal(tensor, rewind[name][replicate]), name
    return ticket


# ------------------------------------------------------------------------------------------ a run folder


def test_cli_exports_a_ticket_plain_pytorch_loads(run_cli: CliRunner, run_dir: Path, tmp_path: Path,
                                                  mnist1d: DatasetSplits) -> None:
    path = tmp_path / "ticket.pt"
    result = export(run_cli, run_dir, "--round", "2", "--replicate", "1", "--out", path)
    assert result.returncode == 0, result.stderr
    assert "ticket of round 2 (asked for)" in result.stdout and "replicate 1" in result.stdout
    ticket = assert_ticket_matches_trial(path, run_dir, 2, 1, mnist1d)
    assert ticket["seed"] == ticket["config"]["seed"] + 1
    plain = plain_load(path)  # a fresh interpreter with torch alone
    assert {"state_dict", "masks", "config", "record"} <= set(plain["keys"])
    assert plain["masks"] == {n: ["torch.bool", m.numel(), int(m.sum())] for n, m in ticket["masks"].items()}
    assert plain["record"] == json.loads(json.dumps(ticket["record"])) and plain["config"] == ticket["config"]


@pytest.mark.parametrize("round_index, replicate", [(1, 0), (2, 0), (1, 1)])
def test_ticket_is_that_round_of_that_replicate(run_dir: Path, tmp_path: Path, mnist1d: DatasetSplits,
                                                round_index: int, replicate: int) -> None:
    path = tmp_path / "ticket.pt"
    export_ticket(str(run_dir), None, path, round_index, replicate)
    ticket = assert_ticket_matches_trial(path, run_dir, round_index, replicate, mnist1d)
    other = export_ticket(str(run_dir), None, tmp_path / "other.pt", round_index, 1 - replicate)
    assert any(not torch.equal(m, other["masks"][n]) for n, m in ticket["masks"].items()), \
        "two replicates (two seeds) prune differently"


def test_a_global_pruning_ticket_records_its_own_replicates_density_by_kind(tmp_path: Path) -> None:
    """Global pruning pools the conv and fc layers under one threshold per replicate, so each replicate has its own
    density per kind of layer: each replicate's ticket records the density_by_kind its own masks have. Before: the
    mean over the replicates, for every replicate. (Conv-2 on 64 random 3x8x8 images: shapes are what matter.)"""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    data = DatasetSplits("cifar10", x, y, x[:16], y[:16], x[:16], y[:16], (3, 8, 8), 10, augment=False)
    config = build_experiment({
        "device": "cpu", "dataset": {"name": "cifar10", "augment": False}, "model": {"name": "conv2"},
        "train": {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "iterations": 8, "eval_every": 4},
        "prune": {"strategy": "global", "rate": 0.5, "rounds": 2}, "replicates": 2})
    Trial(config, tmp_path / "trial", data=data).run()
    kinds = build_model(config.model, data.input_shape, data.num_classes).prunable_kinds()
    by_replicate = []
    for replicate in (0, 1):
        ticket = export_ticket(str(tmp_path / "trial"), None, tmp_path / f"r{replicate}.pt", 1, replicate)
        own = density_by_kind({name: mask[None] for name, mask in ticket["masks"].items()}, kinds)
        assert ticket["record"]["density_by_kind"] == own, replicate
        by_replicate.append(own)
    assert by_replicate[0] != by_replicate[1], "else this trial tests nothing"


def test_default_round_is_the_sparsest_within_tolerance(run_dir: Path, tmp_path: Path) -> None:
    records = read_rounds(run_dir)
    dense = records[0]["val_acc"]
    for tolerance in (0.01, 0.0, 0.5):  # 0.5: every round matches
        expected = min((r for r in records if r["val_acc"] >= dense - tolerance and r["density"] < 1),
                       key=lambda r: r["density"])
        source = TrialSource(str(run_dir), "run", ObjectiveConfig(tolerance=tolerance))
        assert build_ticket(source, None, 0)["round"] == expected["round"], tolerance
    ticket = export_ticket(str(run_dir), None, tmp_path / "t.pt")
    assert ticket["record"]["density"] == min(r["density"] for r in records if r["val_acc"] >= dense - 0.01)
    assert ticket["source"]["round_chosen"] == "the sparsest within tolerance of the dense val_acc"


def test_a_trial_whose_dense_network_did_not_learn_has_no_default_ticket(run_dir: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """At chance every round 'matches' the dense one, so the sparsest would be exported as a winning ticket. The
    same trial with its dense val_acc at chance (0.1) is exit 2 with one line; `--round` still exports."""
    trial = tmp_path / "at_chance"
    shutil.copytree(run_dir, trial)
    state = load_torch(trial / "state.pt")
    state["records"][0]["val_acc"] = 0.1
    save_torch(trial / "state.pt", state)
    result = main_here(capsys, "ticket", "export", trial, "--out", tmp_path / "t.pt")
    assert_user_error(result, "--round", "did not learn", "objective.min_dense_val_acc 0.15", f"0..{ROUNDS - 1}")
    assert not (tmp_path / "t.pt").exists()
    assert main_here(capsys, "ticket", "export", trial, "--round", "1", "--out", tmp_path / "t.pt").returncode == 0


def test_round_0_ticket_is_the_initialization(run_dir: Path, tmp_path: Path, mnist1d: DatasetSplits) -> None:
    ticket = export_ticket(str(run_dir), None, tmp_path / "dense.pt", 0, 1)
    assert all(m.all() for m in ticket["masks"].values())
    torch.manual_seed(ticket["seed"])
    init = build_model(build_experiment(ticket["config"]).model, mnist1d.input_shape, mnist1d.num_classes)
    assert all(torch.equal(t, ticket["state_dict"][n]) for n, t in init.state_dict().items())


def test_cli_run_ticket_reproduces_the_round_exactly(run_cli: CliRunner, run_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "ticket.pt"
    export_ticket(str(run_dir), None, path, 2, 1)
    out = tmp_path / "retrained"
    result = run_cli("run", "--ticket", path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "reproduces the ticket's recorded metrics exactly" in result.stdout
    (retrained,) = read_rounds(out)
    recorded = read_rounds(run_dir)[2]
    assert {k: retrained[k] for k in COMPARED} == recorded_values(recorded, 1)


@pytest.mark.parametrize("round_index, replicate", [(0, 1), (1, 0)])
def test_retraining_reproduces_the_round_exactly(run_dir: Path, tmp_path: Path, round_index: int,
                                                 replicate: int) -> None:
    path = tmp_path / "ticket.pt"
    ticket = export_ticket(str(run_dir), None, path, round_index, replicate)
    retraining = Retraining(path, tmp_path / "retrained")
    record = retraining.run()
    assert not differences(ticket, record)
    assert {k: record[k] for k in COMPARED} == {k: ticket["record"][k] for k in COMPARED}
    assert read_rounds(tmp_path / "retrained") == [record]
    again = Retraining(path, tmp_path / "retrained")  # finished: read back, not retrained
    assert again.records() == [record] and again.run() == record


def test_bad_input_is_refused(capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path,
                              write_config: Callable[..., Path]) -> None:
    out = tmp_path / "t.pt"
    for args, key, words in [((3, 0), "--round", "0..2"), ((-1, 0), "--round", "0..2"),
                             ((None, 2), "--replicate", "0..1")]:
        with pytest.raises(UserError) as err:
            export_ticket(str(run_dir), None, out, *args)
        assert err.value.key == key and words in err.value.message
    with pytest.raises(UserError, match="TRIAL"):
        export_ticket(str(run_dir), "abc123", out)
    with pytest.raises(UserError, match="PATH"):
        export_ticket(str(tmp_path / "nothing"), "x", out)
    assert not out.exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a ticket")
    torch.save({"state_dict": {}}, tmp_path / "dict.pt")
    for path, words in [(garbage, "cannot be read"), (tmp_path / "dict.pt", "not a ticket file"),
                        (tmp_path / "missing.pt", "does not exist")]:
        with pytest.raises(UserError, match=words) as err:
            Retraining(path, tmp_path / "r")
        assert err.value.key == "--ticket" and str(path) in err.value.message
    assert not (tmp_path / "r").exists()
    # the command line (in this process): exit 2, one line, no traceback
    assert_user_error(main_here(capsys, "ticket", "export", run_dir, "--round", "3", "--out", out), "--round", "0..2")
    assert_user_error(main_here(capsys, "run", "--ticket", garbage, "--out", tmp_path / "r"), "--ticket", str(garbage))
    assert_user_error(main_here(capsys, "run", write_config(), "--ticket", garbage), "--ticket")
    assert not out.exists() and not (tmp_path / "r").exists()


def test_an_out_that_cannot_be_written_is_refused_before_anything_runs(
        capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path) -> None:
    """A read-only --out, or one below a file: exit 2 naming --out, before any file is read or written. Before,
    `ticket export` and `run --ticket` tried, then failed with exit 1 ("file exists" for a path below a file)."""
    ticket = tmp_path / "t.pt"
    export_ticket(str(run_dir), None, ticket, 1)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as read_only:
        for args, words in [(("ticket", "export", run_dir, "--out", read_only / "t.pt"), ("read-only",)),
                            (("ticket", "export", run_dir, "--out", a_file / "t.pt"), (str(a_file), "not a folder")),
                            (("run", "--ticket", ticket, "--out", read_only / "r"), ("read-only",)),
                            (("run", "--ticket", ticket, "--out", a_file / "r"), (str(a_file), "not a folder"))]:
            result = main_here(capsys, *args)
            assert_user_error(result, "--out", *words)
            assert result.stdout == ""
        assert list(read_only.iterdir()) == []
    assert a_file.read_text() == "mine"


def test_run_ticket_names_the_trials_config_hash(capsys: pytest.CaptureFixture[str], run_dir: Path,
                                                 tmp_path: Path) -> None:
    """The retraining's own config has no control (it trains the ticket only), so its hash is not the trial's.
    Before, `run --ticket` printed that hash, which `status` and by_config/ never show."""
    ticket = export_ticket(str(run_dir), None, tmp_path / "t.pt", 1)
    ticket["config"]["control"] = "reinit"  # as exported from a trial with a control
    trial_hash = build_experiment(ticket["config"]).config_hash()
    ticket["source"]["config_hash"] = trial_hash
    torch.save(ticket, tmp_path / "with_control.pt")
    result = main_here(capsys, "run", "--ticket", tmp_path / "with_control.pt", "--out", tmp_path / "r")
    assert result.returncode == 0, result
    assert f"round 1 of config {trial_hash} " in result.stdout.splitlines()[0], result.stdout


def test_retraining_refuses_a_folder_holding_something_else(run_dir: Path, tmp_path: Path) -> None:
    for round_index in (1, 2):
        export_ticket(str(run_dir), None, tmp_path / f"r{round_index}.pt", round_index)
    out = tmp_path / "retrained"
    Retraining(tmp_path / "r1.pt", out).run()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for folder in (out, run_dir):
        with pytest.raises(UserError) as err:
            Retraining(tmp_path / "r2.pt", folder)
        assert err.value.key == "--out"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------------------------------ a sweep


@pytest.fixture(scope="module")
def sweep(reference_sweep: h.Sweep) -> h.Sweep:
    return reference_sweep


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sweep_ticket_by_trial_id_and_by_hash(sweep: h.Sweep, tmp_path: Path, mnist1d: DatasetSplits) -> None:
    status = h.status_json(sweep.dir, sweep.cwd, sweep.env)
    row = next(r for r in status["trials"] if r["state"] == "TERMINATED")
    engine_dir = sweep.dir / "by_config" / row["config_hash"] / "engine"
    records = read_rounds(engine_dir)
    tolerance = sweep.tree["objective"]["tolerance"]
    by_id, by_hash = tmp_path / "by_id.pt", tmp_path / "by_hash.pt"
    result = h.run_cli("ticket", "export", sweep.dir, row["trial_id"], "--out", by_id, cwd=sweep.cwd, env=sweep.env)
    assert result.returncode == 0, result.explain()
    ticket = torch.load(by_id, weights_only=True)
    assert records[ticket["round"]]["density"] == h.matching_density(records, tolerance)  # the default round
    assert_ticket_matches_trial(by_id, engine_dir, ticket["round"], 0, mnist1d)
    result = h.run_cli("ticket", "export", sweep.dir, row["config_hash"], "--round", "2", "--out", by_hash,
                       cwd=sweep.cwd, env=sweep.env)
    assert result.returncode == 0, result.explain()
    assert_ticket_matches_trial(by_hash, engine_dir, 2, 0, mnist1d)
    assert build_experiment(ticket["config"]).config_hash() == row["config_hash"]

    out = tmp_path / "retrained"
    result = h.run_cli("run", "--ticket", by_hash, "--out", out, cwd=sweep.cwd, env=sweep.env)
    assert result.returncode == 0, result.explain()
    assert "reproduces the ticket's recorded metrics exactly" in result.stdout
    (retrained,) = read_rounds(out)
    assert {k: retrained[k] for k in COMPARED} == {k: records[2][k] for k in COMPARED}
    with pytest.raises(UserError, match="no trial id or config hash 'nosuchtrial'"):
        export_ticket(str(sweep.dir), "nosuchtrial", tmp_path / "x.pt")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_sweep_without_trial_exports_its_best_trials_ticket(sweep: h.Sweep, tmp_path: Path) -> None:
    """No TRIAL: the ticket of the trial with the best objective among those that finished all their rounds,
    found here from the engines' own rounds; the command says which trial. A sweep whose objective ranks no best
    trial (pareto), or one where no trial has finished yet, is refused with exit 2 naming TRIAL."""
    status = h.status_json(sweep.dir, sweep.cwd, sweep.env)
    tolerance, rounds = sweep.tree["objective"]["tolerance"], sweep.tree["experiment"]["prune"]["rounds"]
    finished = [r for r in status["trials"] if len(h.engine_rounds(sweep.dir, r["config_hash"])) >= rounds]
    best = min(finished, key=lambda r: h.matching_density(h.engine_rounds(sweep.dir, r["config_hash"]), tolerance))
    out = tmp_path / "best.pt"
    result = h.run_cli("ticket", "export", sweep.dir, "--out", out, cwd=sweep.cwd, env=sweep.env)
    assert result.returncode == 0, result.explain()
    assert result.stdout.splitlines()[0] == (f"trial {best['trial_id']} (the sweep's best by objective "
                                             "matching_density)"), result.stdout
    ticket = torch.load(out, weights_only=True)
    assert ticket["source"]["config_hash"] == best["config_hash"] and ticket["source"]["trial"] == best["trial_id"]
    records = h.engine_rounds(sweep.dir, best["config_hash"])
    assert records[ticket["round"]]["density"] == h.matching_density(records, tolerance)

    for change, words in [(lambda spec: spec["sweep"]["objective"].update(name="pareto"), "ranks no single best"),
                          (lambda spec: spec["experiment"]["prune"].update(rounds=rounds + 5),
                           "has finished all its rounds yet")]:
        copy = tmp_path / "copy" / sweep.dir.name
        shutil.rmtree(copy.parent, ignore_errors=True)
        shutil.copytree(sweep.dir, copy)
        spec = json.loads((copy / "sweep.json").read_text())
        change(spec)
        (copy / "sweep.json").write_text(json.dumps(spec))
        refused = h.run_cli("ticket", "export", copy, "--out", tmp_path / "no.pt", cwd=sweep.cwd, env=sweep.env)
        assert refused.returncode == 2 and refused.stderr.startswith("lth-sweep: error: TRIAL: "), refused.explain()
        assert words in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.explain()
        assert not (tmp_path / "no.pt").exists()


# ------------------------------------------------------------------------------------------ a sweep at a URI


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local S3 server (moto, the project's S3 test server: no cloud account exists here); yields its endpoint."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        h.poll(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=60, what="moto_server")
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(key, value)
        yield f"127.0.0.1:{port}"
    finally:
        h.kill_group(proc.pid)
        proc.wait()


def test_export_from_a_sweep_at_a_uri(s3_server: str, run_dir: Path, tmp_path: Path,
                                      mnist1d: DatasetSplits) -> None:
    """A sweep folder on S3 laid out as a sweep leaves it (sweep.json, by_config/<hash>/engine), built here from
    a finished trial: export reads it through pyarrow.fs into a temporary copy, with no Ray."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"http://{s3_server}", scheme="http", access_key="test",
                           secret_key="test", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("bucket")
    uri = f"s3://bucket/sweeps/remote?endpoint_override={s3_server}&scheme=http&region=us-east-1"
    config_hash = load_experiment(run_dir / "config.yaml").config_hash()
    spec = LaunchSpec(sweep=SweepConfig(name="remote"), experiment={}, experiment_dir=uri, wandb_mode="disabled")
    save_spec(spec)
    storage.copy_dir(str(run_dir), storage.join(uri, "by_config", config_hash, "engine"))
    out = tmp_path / "ticket.pt"
    ticket = export_ticket(uri, config_hash, out, round_index=1, replicate=1)
    assert ticket["source"]["config_hash"] == config_hash
    assert_ticket_matches_trial(out, run_dir, 1, 1, mnist1d)
    with pytest.raises(UserError, match="no trial id or config hash 'nosuch'"):
        export_ticket(uri, "nosuch", tmp_path / "x.pt")


@pytest.mark.parametrize("model_name", MODELS)
def test_every_zoo_model_keeps_its_state_dict_names(model_name: str) -> None:
    """A ticket's state_dict is the engine's stacked parameters and buffers, unstacked: for every model of the
    zoo those are exactly the names (and shapes) of the module's own state_dict, so load_state_dict accepts it."""
    shape = (40,) if model_name in ("mlp", "lenet_300_100") else (3, 32, 32)
    config = build_experiment({"model": {"name": model_name},
                               "dataset": {"name": "mnist1d" if len(shape) == 1 else "cifar10"}})
    pop = Population.initialize(lambda: build_model(config.model, shape, 10), [0], torch.device("cpu"))
    module = build_model(config.model, shape, 10)
    module.load_state_dict({n: t[0] for n, t in pop.snapshot().items()})
