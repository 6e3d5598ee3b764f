"""Copying a sweep off its storage (all of it, or only its offline W&B runs) so that `wandb sync` works from
any machine after the cluster is gone, and the one command line that uploads a sweep's offline runs."""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath

from lth_sweep import storage
from lth_sweep.errors import UserError

# An offline run of trial config <hash>: <sweep>/by_config/<hash>/wandb/wandb/offline-run-<time>-<id>/
WANDB_RUNS_GLOB = "by_config/*/wandb/wandb/offline-run-*"


def fetch_sweep(experiment_dir: str, out: Path, wandb_only: bool) -> list[Path]:
    """Copies the sweep (or only every `by_config/<hash>/wandb` folder there is) under `out`, keeping its
    layout; returns the offline W&B run folders now under `out`. Raises UserError naming what failed."""
    try:
        if not wandb_only:
            storage.copy_dir(experiment_dir, str(out))
            return sorted(out.glob(WANDB_RUNS_GLOB))
        files = storage.list_files(storage.join(experiment_dir, "by_config"))
        paths = [PurePosixPath(name).parts for name in files]
        with_wandb = sorted({parts[0] for parts in paths if len(parts) > 2 and parts[1] == "wandb"})
        for config_hash in with_wandb:
            source = storage.join(experiment_dir, "by_config", config_hash, "wandb")
            storage.copy_dir(source, str(out / "by_config" / config_hash / "wandb"))
    except OSError as err:
        raise UserError("--out", f"could not copy {experiment_dir} to {out}: {err}") from None
    return sorted(out.glob(WANDB_RUNS_GLOB))


def has_offline_runs(experiment_dir: str) -> bool:
    """Whether some trial wrote offline W&B run files (an online sweep's trials fall back to them)."""
    if not storage.is_uri(experiment_dir):
        return any(Path(experiment_dir).glob(WANDB_RUNS_GLOB))
    parts = (PurePosixPath(name).parts for name in storage.list_files(storage.join(experiment_dir, "by_config")))
    return any(len(p) > 3 and p[1:3] == ("wandb", "wandb") and p[3].startswith("offline-run-") for p in parts)


def wandb_sync_command(experiment_dir: str, name: str) -> str:
    """A shell command that uploads the sweep's offline W&B runs, in order, as printed: `wandb sync` of the
    run folders for a local sweep; for one at a URI, `lth-sweep fetch` into ./<name>-wandb first."""
    if not storage.is_uri(experiment_dir):
        return f"wandb sync {shlex.quote(experiment_dir)}/{WANDB_RUNS_GLOB}"
    local = shlex.quote(f"./{name}-wandb")
    return (f"lth-sweep fetch {shlex.quote(experiment_dir)} --wandb --out {local} && "
            f"wandb sync {local}/{WANDB_RUNS_GLOB}")
