"""A node's lifecycle under load: started and stopped many times while other processes keep
every core busy, each stop ends within its deadline and leaves no heartbeat behind.

Both front ends are covered: the Python `Apiary` (start/shutdown in-process) and the
`apiary node` process (SIGTERM). The shutdown deadline is `node.shutdown_timeout` (10 s)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROUNDS = int(os.environ.get("APIARY_LIFECYCLE_ROUNDS", "200"))
DEADLINE_S = 10.0


@pytest.fixture
def busy_cores():
    """One spinning process per core, for the whole test."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    yield
    for p in spinners:
        p.kill()
        p.wait(timeout=10)


def heartbeats(meadow: Path):
    return sorted((meadow / "_apiary" / "swarm" / "nodes").glob("*.json"))


def test_python_apiary_starts_and_stops_within_deadline(tmp_path, busy_cores, monkeypatch):
    import apiary

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    meadow = tmp_path / "meadow"
    slowest = 0.0
    for i in range(ROUNDS):
        ap = apiary.Apiary("lifecycle", storage=str(meadow))
        ap.start()
        assert len(heartbeats(meadow)) == 1, f"round {i}: started without a heartbeat"
        started = time.monotonic()
        ap.shutdown()
        took = time.monotonic() - started
        slowest = max(slowest, took)
        assert took < DEADLINE_S, f"round {i}: shutdown took {took:.1f}s"
        assert heartbeats(meadow) == [], f"round {i}: heartbeat left behind"
    print(f"python: {ROUNDS} rounds, slowest shutdown {slowest:.2f}s")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc, log: Path, deadline: float):
    while time.monotonic() < deadline:
        if "apiary node ready" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"node exited early: {log.read_text(errors='replace')}")
        time.sleep(0.02)
    raise AssertionError(f"node not ready in time: {log.read_text(errors='replace')}")


def test_node_process_stops_on_sigterm_within_deadline(tmp_path, busy_cores, apiary_binary):
    meadow = tmp_path / "meadow"
    state = tmp_path / "state"
    # Every service on: the embedded broker, ingestion, HTTP and the swarm.
    slowest = 0.0
    for i in range(ROUNDS):
        config = tmp_path / "apiary.toml"
        config.write_text(
            f'[node]\nstate_dir = "{state}"\n'
            f'[meadow]\nuri = "{meadow}"\n'
            f'[mqtt]\nlisten = "127.0.0.1:{free_port()}"\n'
            '[http]\nlisten = "127.0.0.1:0"\n'
            '[log]\nformat = "json"\n'
        )
        log = tmp_path / "node.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [apiary_binary, "--config", str(config), "node"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("APIARY_")},
            )
        try:
            wait_ready(proc, log, time.monotonic() + 60)
            assert len(heartbeats(meadow)) == 1, f"round {i}: ready without a heartbeat"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=DEADLINE_S + 5)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        slowest = max(slowest, took)
        assert code == 0, f"round {i}: exit {code}: {log.read_text(errors='replace')}"
        assert took < DEADLINE_S, f"round {i}: stop took {took:.1f}s"
        assert heartbeats(meadow) == [], f"round {i}: heartbeat left behind"
    print(f"node: {ROUNDS} rounds, slowest stop {slowest:.2f}s")
