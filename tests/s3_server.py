"""An S3-compatible server for the tests: moto's own (`moto_server`, moto[server] >= 5.2.2; 5.2.0-5.2.1 answer
CompleteMultipartUpload with a reply pyarrow rejects) on a free loopback port, started and stopped by the test
session, with one bucket created through pyarrow. It stands in for S3 (no cloud account here); everything of
ours talks to it through the same pyarrow code as to AWS.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
from sweep_helpers import MARKER_ENV

# Fake credentials: moto accepts any; pyarrow (and so Ray Tune and our trials) read them from the environment.
# moto takes any keys; the secret is one no file would hold by chance, so tests can grep for it
FAKE_SECRET = "lth-fake-aws-secret-5c0d9e7b1f"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """A running moto server and one bucket on it."""

    def __init__(self, log_path: Path, bucket: str = "lth-bucket") -> None:
        self.port = free_port()
        self.bucket = bucket
        self.endpoint = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("moto_server")
        argv = [exe] if exe else [sys.executable, "-m", "moto.server"]
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        # without the sweep tests' marker: their clean-up must not stop the session's server
        env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
        self.proc = subprocess.Popen([*argv, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self._wait_until_up(log_path)
        self.filesystem().create_dir(bucket)

    def _wait_until_up(self, log_path: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}:\n{log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not listen on port {self.port} within {timeout}s") from None
                time.sleep(0.2)

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", region="us-east-1",
                                 access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                 secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], allow_bucket_creation=True)

    def uri(self, prefix: str) -> str:
        """`s3://BUCKET/PREFIX?endpoint_override=...`: what a user passes to `--storage`."""
        return f"s3://{self.bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def download(self, prefix: str, local: Path) -> Path:
        """Copies everything under BUCKET/PREFIX to the local folder `local` (replaced); returns it."""
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        pafs.copy_files(f"{self.bucket}/{prefix}", str(local), source_filesystem=self.filesystem(),
                        destination_filesystem=pafs.LocalFileSystem())
        return local

    def keys(self, prefix: str) -> list[str]:
        """Object keys under BUCKET/PREFIX, relative to it."""
        selector = pafs.FileSelector(f"{self.bucket}/{prefix}", recursive=True, allow_not_found=True)
        base = f"{self.bucket}/{prefix}/"
        return sorted(info.path.removeprefix(base) for info in self.filesystem().get_file_info(selector)
                      if info.type == pafs.FileType.File)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._log.close()


def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """For a fixture: a moto server for the duration of the fixture's scope."""
    server = S3Server(log_dir / "moto_server.log")
    try:
        yield server
    finally:
        server.stop()
