"""Shared pieces of the deploy checks: paths, the moto server, the tswatch
binary. Every process a test starts binds 127.0.0.1 on a free port and is
killed when the test ends, whether it passed or not."""

import os
import socket
import sys
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent
ROOT = DEPLOY.parent
CFN_TEMPLATE = DEPLOY / "cloudformation" / "tswatch.yaml"
TERRAFORM = DEPLOY / "terraform"
USER_DATA = DEPLOY / "cloud-init" / "user-data.yaml"
UNIT = DEPLOY / "systemd" / "tswatch.service"
FIXTURE = ROOT / "crates" / "tswatch" / "tests" / "fixtures" / "sensors_20260224T001051.csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, timeout, f, interval=0.1):
    """Calls f until it returns something truthy; fails after timeout."""
    start = time.monotonic()
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A child process with its output in a log file; killed by stop()."""

    def __init__(self, args, log: Path, env=None):
        self.log = log
        self._out = open(log, "wb")
        self.p = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._out.close()


@pytest.fixture
def moto(tmp_path):
    """A moto server on a free loopback port; yields its URL."""
    port = free_port()
    proc = Proc(
        [sys.executable, str(Path(__file__).with_name("moto_server.py")), "-H", "127.0.0.1", "-p", str(port)],
        tmp_path / "moto.log",
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.p.poll() is not None:
            pytest.fail(f"moto_server exited:\n{proc.text()}")
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            return True
        except OSError:
            return False

    try:
        wait_for("moto_server to start", 60, up)
        yield url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def tswatch_bin() -> Path:
    """The binary the checks run: $TSWATCH_BIN, else cargo's debug build."""
    b = Path(os.environ.get("TSWATCH_BIN", ROOT / "target" / "debug" / "tswatch"))
    if not b.is_file():
        pytest.fail(f"{b} does not exist: run `cargo build -p tswatch` first (scripts/test does)")
    return b
