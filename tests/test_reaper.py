"""The watchdog that ends a killed process's engine processes (vLLM's EngineCore outlives a SIGKILLed parent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import REPO

# A stand-in for `factory generate` with the vllm backend: starts the watchdog (or not), then an engine-like child in
# its own session that ignores SIGTERM, and a plain child; prints their pids and waits to be killed.
PARENT = """
import subprocess, sys, time
from factory.teachers.reaper import start_reaper
if sys.argv[1] == "reaper":
    start_reaper()
stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"],
                            start_new_session=True)
plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(stubborn.pid, plain.pid, flush=True)
time.sleep(300)
"""


def start_parent(mode: str) -> tuple[subprocess.Popen, list[psutil.Process]]:
    proc = subprocess.Popen([sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    pids = [int(pid) for pid in proc.stdout.readline().split()]
    time.sleep(1.5)  # the watchdog looks every 0.5 s
    return proc, [psutil.Process(pid) for pid in pids]


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_children_end_when_their_parent_is_killed(signum: int) -> None:
    proc, children = start_parent("reaper")
    proc.send_signal(signum)
    proc.wait(timeout=10)
    _, left = psutil.wait_procs(children, timeout=15)
    assert not alive(left), f"still running after the parent died: {[p.pid for p in alive(left)]}"


def test_without_the_watchdog_they_outlive_the_parent() -> None:
    """The control: what the watchdog is for (and proof the test above can fail)."""
    proc, children = start_parent("none")
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(1.0)
        assert len(alive(children)) == 2
    finally:
        for child in alive(children):
            child.kill()
