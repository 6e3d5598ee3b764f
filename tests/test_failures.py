"""Operational failures end in one line that names the file or key, with no traceback: exit 2 for what the user
can fix before anything runs (nothing is written, no header is printed), exit 1 for a failure while running.

Read-only and full file systems are real ones: small tmpfs mounts (`mount -t tmpfs`, as root, which the
development machines and CI are). A chmod 0555 folder would not do: root writes through permissions. Where
mounting is not possible the tests that need it are skipped and say why.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sweep_helpers as h
import torch

from lth_sweep.checkpoint import load_torch
from lth_sweep.cli import DEBUG_ENV
from lth_sweep.config import DatasetConfig
from lth_sweep.engine import data
from lth_sweep.engine.data import load_dataset
from lth_sweep.engine.lottery import Trial
from lth_sweep.errors import CorruptFile, RunFailure, UserError
from lth_sweep.sweep.terminal import Terminal

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "sweeps" / "experiments"


@contextmanager
def tmpfs(mount_point: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs of `size` at `mount_point`, read-only if asked; unmounted afterwards."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount(8)): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def one_line_error(result: Any, code: int, *words: str) -> str:
    """Exit `code`, exactly one line on stderr, no traceback; the line contains every word."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def finished_trial(out: Path, config) -> Path:
    Trial(config, out).run()
    return out


# ------------------------------------------------------------------------------------ datasets


@pytest.mark.parametrize("experiment, folder, first_file", [
    ("lenet_mnist.yaml", "MNIST/raw", "train-images-idx3-ubyte"),
    ("conv2_cifar10.yaml", "cifar-10-batches-py", "data_batch_1"),
])
def test_download_without_network_says_which_files_to_put_where(cli_here: Callable[..., Any], tmp_path: Path,
                                                                 experiment: str, folder: str,
                                                                 first_file: str) -> None:
    """The shipped files set `download: true`; this machine cannot reach the dataset hosts, so the real
    download fails by itself (bounded by DOWNLOAD_TIMEOUT_S per connection)."""
    root, out = tmp_path / "data", tmp_path / "out"
    result = cli_here("run", SHIPPED / experiment, "--set", f"dataset.root={root}", "--out", out)
    one_line_error(result, 2, "dataset.download", str(root / folder), first_file)
    assert result.stdout == "", "the header comes after the checks"
    assert not out.exists()


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_download_true_with_the_files_in_place_reads_them(tmp_path: Path, name: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What the failure message tells the user to do works: the files put in the folder are read, with
    `download: true` still set, and no download is tried."""
    from test_data import write_cifar10, write_mnist

    if name == "mnist":
        write_mnist(tmp_path)
    else:
        write_cifar10(tmp_path)
    local = load_dataset(DatasetConfig(name=name, root=str(tmp_path), download=False, val_size=4), "cpu")

    def no_download(*args: Any) -> None:
        raise AssertionError("a download was tried although the files are in place")

    monkeypatch.setattr(data, "_download", no_download)
    fetched = load_dataset(DatasetConfig(name=name, root=str(tmp_path), download=True, val_size=4), "cpu")
    assert torch.equal(fetched.train_x, local.train_x) and torch.equal(fetched.test_y, local.test_y)


# ------------------------------------------------------------------------------------ where results go


def test_out_on_a_read_only_file_system(cli_here: Callable[..., Any], write_config: Callable[..., Path],
                                        tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as read_only:
        result = cli_here("run", write_config(), "--out", read_only / "trial")
        one_line_error(result, 2, "--out", str(read_only), "read-only")
        assert result.stdout == ""
        assert list(read_only.iterdir()) == []


def test_out_below_a_file(cli_here: Callable[..., Any], write_config: Callable[..., Path], tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    result = cli_here("run", write_config(), "--out", a_file / "trial")
    one_line_error(result, 2, "--out", str(a_file), "not a folder")
    assert result.stdout == "" and a_file.read_text() == "mine"


@pytest.fixture
def sweep_file(tmp_path: Path, data_root: Path) -> Path:
    return h.write_sweep(tmp_path / "imp.yaml", h.sweep_tree(data_root, num_samples=1))


def test_storage_on_a_read_only_file_system(cli_here: Callable[..., Any], sweep_file: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as read_only:
        result = cli_here("launch", sweep_file, "--storage", read_only / "sweeps")
        one_line_error(result, 2, "--storage", str(read_only), "read-only")
        assert result.stdout == "", "refused before the header, before Ray"


def test_storage_below_a_file(cli_here: Callable[..., Any], sweep_file: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    result = cli_here("launch", sweep_file, "--storage", a_file / "sweeps")
    one_line_error(result, 2, "--storage", str(a_file), "not a folder")
    assert result.stdout == ""


@pytest.mark.parametrize("variable", ["RAY_TMPDIR", "TMPDIR"])
def test_a_temp_folder_too_long_for_rays_sockets(variable: str, cli_here: Callable[..., Any], sweep_file: Path,
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray cannot start under a temp folder whose socket paths pass 107 bytes (a long TMPDIR, as batch schedulers
    set): the launch names the variable to shorten, before Ray starts and before anything is written."""
    long = tmp_path / ("t" * 60)
    long.mkdir()
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv(variable, str(long))
    result = cli_here("launch", sweep_file, "--storage", tmp_path / "storage")
    one_line_error(result, 2, f"{variable}:", str(long), "RAY_TMPDIR=/tmp")
    assert result.stdout == "" and not (tmp_path / "storage").exists() and not (long / "ray").exists()


def test_unknown_uri_scheme(cli_here: Callable[..., Any], sweep_file: Path) -> None:
    line = one_line_error(cli_here("launch", sweep_file, "--storage", "ftp://host/sweeps"), 2,
                          "--storage", "ftp://", "s3://", "gs://")
    assert "folder" in line
    one_line_error(cli_here("status", "ftp://host/sweeps/imp"), 2, "ftp://", "s3://")
    for no_bucket in ("s3://", "s3:///sweeps", "gs://?endpoint_override=http://127.0.0.1:9"):
        one_line_error(cli_here("launch", sweep_file, "--storage", no_bucket), 2, "--storage", "names no bucket")


def test_a_cluster_address_nobody_answers_at_is_one_line(cli_here: Callable[..., Any], sweep_file: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `ray.init` retried the GCS connection for minutes, printing Ray's C++ log lines. An address from
    the environment (RAY_ADDRESS, which ray.init reads) is named as such: there is no --address to fix."""
    storage = tmp_path / "storage"
    for address in ("127.0.0.1:9", "ray://127.0.0.1:9"):  # loopback port 9: refused at once
        one_line_error(cli_here("launch", sweep_file, "--storage", storage, "--address", address), 1,
                       f"error: --address: {address}: no Ray cluster answers there")
    one_line_error(cli_here("launch", sweep_file, "--storage", storage, "--address", "headnode"), 2,
                   "error: --address: headnode", "HOST:PORT")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    one_line_error(cli_here("launch", sweep_file, "--storage", storage), 1,
                   "error: RAY_ADDRESS: 127.0.0.1:9: no Ray cluster answers there")
    monkeypatch.setenv(DEBUG_ENV, "1")  # the traceback, down to the socket's own error
    with pytest.raises(RunFailure) as failure:
        cli_here("launch", sweep_file, "--storage", storage)
    assert isinstance(failure.value.__context__, ConnectionRefusedError) and not failure.value.__suppress_context__
    assert not storage.exists()


def test_a_file_that_is_not_utf8_text_is_one_line(cli_here: Callable[..., Any], tmp_path: Path) -> None:
    """An experiment file or a sweep's sweep.json overwritten with binary: before, a UnicodeDecodeError traceback."""
    experiment = tmp_path / "binary.yaml"
    experiment.write_bytes(b"seed: 0\xff\xfe\n")
    one_line_error(cli_here("run", experiment, "--out", tmp_path / "out"), 2, str(experiment), "not UTF-8 text")
    assert not (tmp_path / "out").exists()
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_bytes(b"\xff\xfe\x00{")
    for command in ("status", "report"):
        one_line_error(cli_here(command, sweep), 2, str(sweep / "sweep.json"), "not UTF-8 text")


def test_a_uri_with_credentials_in_it_is_refused_without_repeating_them(cli_here: Callable[..., Any],
                                                                         sweep_file: Path) -> None:
    """pyarrow accepts s3://KEY:SECRET@bucket/...; the URI would go into sweep.json, Tune's files and the terminal."""
    secret = "lthUriSecret0123456789abcdef"
    for args in (("launch", sweep_file, "--storage", f"s3://testing:{secret}@bucket/sweeps"),
                 ("status", f"s3://testing:{secret}@bucket/sweeps/imp"),
                 ("ticket", "export", f"gs://user:{secret}@bucket/sweeps/imp", "t0", "--out", "ticket.pt")):
        result = cli_here(*args)
        one_line_error(result, 2, "credentials in it", "AWS_SECRET_ACCESS_KEY")
        assert secret not in result.stdout + result.stderr
    assert not (sweep_file.parent / "runs").exists()


def test_unreachable_storage_is_one_line(cli_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An S3 endpoint nobody answers (loopback port 9, refused at once): pyarrow's OSError becomes one line. The
    AWS SDK retries for ~6 s before it gives up, so the three commands run side by side, as processes."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fake")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake")
    uri = "s3://bucket/sweeps/imp?endpoint_override=http://127.0.0.1:9&scheme=http&region=us-east-1"
    procs = [subprocess.Popen(h.cli_argv(command, uri), cwd=cli_cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for command in ("status", "resume", "report")]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), 1, "bucket",
                       "127.0.0.1:9")


# ------------------------------------------------------------------------------------ while running


def test_full_disk_while_writing_state(run_cli: Callable[..., Any], write_config: Callable[..., Path],
                                       tmp_path: Path) -> None:
    """A 256-wide MLP's state (weights + Adam moments, ~150 KB) does not fit a 200 KB tmpfs next to its
    rewind point: the first state save after the rewind point fails. Run as a process: the real command."""
    with tmpfs(tmp_path / "small", "200k") as small:
        out = small / "trial"
        result = run_cli("run", write_config(), "--set", "model.widths=[256]", "--out", out, timeout=240)
        one_line_error(result, 1, str(out / "state.pt"), "no space left")
        assert load_torch(out / "state.pt")["round"] == 0, "the previous state.pt is intact"
        assert not list(out.glob(".*.tmp")), "no temp file is left behind"


def test_a_full_disk_under_the_driver_log_names_the_log(tmp_path: Path) -> None:
    """Tune prints into the sweep's driver.log (fds 1 and 2); on a full disk that print raised an OSError naming no
    file, and the sweep ended in "[Errno 28] No space left on device". Now it is a failure naming the log."""
    with tmpfs(tmp_path / "small", "64k") as small:
        (small / "filler").write_bytes(b"x" * 60_000)
        log = small / "driver.log"
        with pytest.raises(RunFailure) as failure, Terminal(log):
            for _ in range(100):  # a write that fills the disk writes what fits; the next one fails
                os.write(1, b"Tune's output\n" * 1_000)
        assert failure.value.path == log and "no space left on device" in str(failure.value)
        with pytest.raises(OSError) as other, Terminal(log):
            raise OSError(errno.ENOSPC, "No space left on device", str(small / "state.pt"))
        assert not isinstance(other.value, RunFailure), "a failure that names its file stays as it is"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_state_in_run_out_names_the_file(cli_here: Callable[..., Any], write_config: Callable[..., Path],
                                                 make_config, tmp_path: Path, damage: str) -> None:
    """Before: a RuntimeError traceback, or (empty file) "interrupted" and exit 130."""
    out = finished_trial(tmp_path / "trial", make_config({"prune.rounds": 2}))
    state = out / "state.pt"
    data = state.read_bytes()
    state.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x80\x02not a state"}[damage])
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    result = cli_here("run", write_config(), "--set", "prune.rounds=2", "--out", out)
    one_line_error(result, 2, str(state), "truncated or corrupt")
    assert result.stdout == ""
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before, "nothing was written"
    shutil.rmtree(out)


@pytest.mark.parametrize("error", [RunFailure("/x/state.pt", "could not be written (no space left on device)"),
                                   CorruptFile("/x/state.pt", "EOFError"), UserError("--out", "a message")],
                         ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(error: Exception) -> None:
    """Ray ships a trial's exception to the driver by pickling it."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
