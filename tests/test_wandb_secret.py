"""The W&B API key never reaches the disk, and an explicit WANDB_MODE wins over `mode: auto`.

Two real sweeps (Ray local, Optuna, W&B) with a fake key in the environment. Offline (`WANDB_MODE=offline`):
the runs are offline files. Online with W&B's host unreachable (a closed loopback port; no W&B server can
exist here), stored in a bucket of moto's S3 server: each trial gives up on W&B's start-up after a few seconds,
writes offline files instead and copies them to the bucket.
Each run has a private HOME (W&B's credential file, caches, its core debug logs), TMPDIR and RAY_TMPDIR (Ray's
session logs, runtime_env_agent.log among them); a binary-safe search of those and of the sweep folder finds
the key nowhere."""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sweep_helpers as h
from s3_server import CREDENTIALS, S3Server

from lth_sweep.errors import UserError
from lth_sweep.sweep.tracking import resolve_mode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# 40 characters like a W&B key, random per session so that no file can hold it by chance
FAKE_KEY = "lthfake" + uuid.uuid4().hex + "0"
NUM_SAMPLES = 2
FALLBACK_WARNING = "W&B did not start online"


@pytest.fixture()
def ray_tmp() -> Iterator[Path]:
    yield from h.private_ray_tmp()


def files_holding(secret: str, *roots: Path) -> list[Path]:
    """Regular files under `roots` whose bytes contain `secret` (or its last 24 characters)."""
    needles = (secret.encode(), secret[-24:].encode())
    found = []
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            if path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(needle in data for needle in needles):
                found.append(path)
    return found


def launch_with_key(base: Path, data_root: Path, ray_tmp: Path, storage: str | None = None,
                    **env_extra: str | None) -> tuple[h.Sweep, list[Path]]:
    """A 2-trial sweep with `mode: auto` and the fake key, stored in `base/storage` or at the URI `storage`;
    returns it and the folders to search."""
    tree = h.sweep_tree(data_root, epochs=2, rounds=2, num_samples=NUM_SAMPLES, max_concurrent=NUM_SAMPLES,
                        wandb={"project": "lth-sweep-tests", "mode": "auto"})
    home, tmp = base / "home", base / "tmp"
    home.mkdir(parents=True)
    tmp.mkdir()
    sweep_file = h.write_sweep(base / "imp.yaml", tree)
    env = h.cli_env(ray_tmp, WANDB_API_KEY=FAKE_KEY, HOME=str(home), TMPDIR=str(tmp))
    for key, value in env_extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    result = h.run_cli("launch", sweep_file, "--storage", storage or base / "storage", cwd=base, env=env,
                       timeout=240)
    return h.Sweep(base / "storage" / "imp", tree, result, base, env), [base, ray_tmp]


def offline_runs_with_rounds(sweep_dir: Path) -> dict[str, list[int]]:
    """config hash -> rounds found in that config's offline W&B runs (W&B's own reader)."""
    rounds = {}
    for config_dir in sorted((sweep_dir / "by_config").iterdir()):
        items = [item for run_dir in h.wandb_run_dirs(sweep_dir, config_dir.name)
                 for item in h.history_items(h.wandb_records(run_dir))]
        rounds[config_dir.name] = sorted(item["round"] for item in items if "val_acc" in item)
    return rounds


def test_offline_mode_in_the_environment_wins_and_the_key_is_nowhere(tmp_path: Path, data_root: Path,
                                                                     ray_tmp: Path) -> None:
    sweep, searched = launch_with_key(tmp_path, data_root, ray_tmp, WANDB_MODE="offline")
    assert sweep.launch.returncode == 0, sweep.launch.explain()
    assert "W&B offline ->" in sweep.launch.stdout.splitlines()[0]  # not online: the key alone decided before
    assert offline_runs_with_rounds(sweep.dir) == {c: [0, 1] for c in offline_runs_with_rounds(sweep.dir)}
    assert len(offline_runs_with_rounds(sweep.dir)) == NUM_SAMPLES
    assert any((ray_tmp / "ray").glob("session_*/logs/runtime_env_agent.log")), "Ray's logs are not where we look"
    assert files_holding(FAKE_KEY, *searched) == []


def test_unreachable_online_falls_back_to_offline_files_and_the_key_is_nowhere(tmp_path: Path, data_root: Path,
                                                                                ray_tmp: Path, s3: S3Server) -> None:
    """In a bucket (moto's S3 server): the runs that fell back to offline files are copied there like an
    offline sweep's, so they outlive the node, and the summary says how to fetch and upload them."""
    sweep, searched = launch_with_key(tmp_path, data_root, ray_tmp, s3.uri("fallback"), **CREDENTIALS,
                                      WANDB_MODE=None,
                                      WANDB_BASE_URL="http://127.0.0.1:9",  # loopback port 9: refused at once
                                      WANDB_INIT_TIMEOUT="4")  # W&B retries until the bound: keep it short
    out = sweep.launch.stdout + sweep.launch.stderr  # the terminal: one warning line per trial
    assert sweep.launch.returncode == 0, sweep.launch.explain()
    assert "W&B online ->" in sweep.launch.stdout.splitlines()[0]  # auto with a key: online
    assert sum(FALLBACK_WARNING in line and "warning:" in line for line in out.splitlines()) == NUM_SAMPLES, \
        sweep.launch.explain()
    warning = next(line for line in out.splitlines() if FALLBACK_WARNING in line)
    assert "written offline under" in warning and "wandb sync" in warning
    assert (f"W&B runs were written offline; upload them with: lth-sweep fetch {shlex.quote(s3.uri('fallback/imp'))}"
            f" --wandb") in sweep.launch.stdout, "the summary says how to upload the runs that fell back"
    copy = s3.download("fallback/imp", tmp_path / "bucket")
    rounds = offline_runs_with_rounds(copy)
    assert len(rounds) == NUM_SAMPLES and all(r == [0, 1] for r in rounds.values()), rounds
    debug_logs = list((tmp_path / "home").rglob("*.log")) + list(copy.rglob("debug*.log"))
    assert debug_logs, "W&B's debug logs are not where we look"
    assert files_holding(FAKE_KEY, *searched) == []


def test_the_search_can_find_the_key(tmp_path: Path) -> None:
    """The search itself works on binary files and nested folders."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "blob.bin").write_bytes(b"\x00\xff" + FAKE_KEY.encode() + b"\x00")
    (tmp_path / "a" / "clean.txt").write_text("nothing here")
    assert files_holding(FAKE_KEY, tmp_path) == [tmp_path / "a" / "b" / "blob.bin"]


# ------------------------------------------------------------------------------------ resolve_mode


@pytest.mark.parametrize(("env_mode", "expected"), [
    ("offline", "offline"), ("online", "online"), ("disabled", "disabled"), ("dryrun", "offline"),
    ("run", "online"), (" Offline ", "offline"),
])
def test_explicit_wandb_mode_wins_over_auto(env_mode: str, expected: str) -> None:
    assert resolve_mode("auto", {"WANDB_MODE": env_mode, "WANDB_API_KEY": FAKE_KEY}) == expected


def test_auto_without_wandb_mode_looks_for_a_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    assert resolve_mode("auto", {}) == "offline"
    assert resolve_mode("auto", {"WANDB_MODE": ""}) == "offline"
    assert resolve_mode("auto", {"WANDB_API_KEY": FAKE_KEY}) == "online"
    (tmp_path / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolve_mode("auto", {}) == "online"  # W&B's credential file


def test_a_mode_in_the_sweep_file_is_kept() -> None:
    for mode in ("online", "offline", "disabled"):
        assert resolve_mode(mode, {"WANDB_MODE": "disabled" if mode != "disabled" else "online"}) == mode


def test_an_unknown_wandb_mode_is_refused() -> None:
    with pytest.raises(UserError) as err:
        resolve_mode("auto", {"WANDB_MODE": "sometimes"})
    assert err.value.key == "WANDB_MODE" and "offline" in err.value.message


def test_resume_applies_an_explicit_wandb_mode(monkeypatch: pytest.MonkeyPatch, data_root: Path) -> None:
    """A sweep whose `auto` went online at launch resumes offline when WANDB_MODE=offline is set now."""
    from lth_sweep.sweep.launch import with_env_wandb_mode
    from lth_sweep.sweep.schema import SweepConfig
    from lth_sweep.sweep.spec import LaunchSpec

    def spec(file_mode: str) -> LaunchSpec:
        tree = h.sweep_tree(data_root, wandb={"mode": file_mode})
        experiment = tree.pop("experiment")
        return LaunchSpec(sweep=SweepConfig.model_validate(tree), experiment=experiment, experiment_dir="/x",
                          wandb_mode="online")

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert with_env_wandb_mode(spec("auto")).wandb_mode == "offline"
    assert with_env_wandb_mode(spec("online")).wandb_mode == "online"  # the sweep file said so
    monkeypatch.delenv("WANDB_MODE")
    assert with_env_wandb_mode(spec("auto")).wandb_mode == "online"  # nothing explicit: as launched
