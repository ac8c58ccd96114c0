"""Engine processes end with the process that started them, even when it is SIGKILLed.

vLLM's EngineCore and its workers outlive a parent killed with SIGKILL (or by the OOM killer) and
keep their memory: on a GPU the resumed run then cannot load its engine, with no hint that an
orphan holds the memory (vllm-project/vllm#55510, open). `start_reaper()` starts a small watchdog
beside the caller: while the caller lives it records the caller's descendants; once the caller is
gone (killed, crashed or exited), it ends those that are still running: SIGTERM, then SIGKILL.

This file is also the watchdog's program: it imports only the standard library and psutil, so that
it starts in a few milliseconds and needs nothing of the factory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5    # how often the watchdog looks at the caller's descendants
GRACE_S = 5.0   # SIGTERM first (vLLM's cooperative shutdown), SIGKILL after this


def start_reaper() -> subprocess.Popen:
    """A watchdog that ends this process's descendants when this process ends."""
    return subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _watch(parent: int) -> None:
    import psutil

    me = os.getpid()
    known: dict[int, float] = {}  # pid -> create time: a pid reused by an unrelated process is never signalled
    while os.getppid() == parent:  # reparented: the caller is gone
        try:
            for child in psutil.Process(parent).children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child.create_time())
        except psutil.Error:
            break
        time.sleep(POLL_S)
    _end(_still_running(known, psutil), psutil)


def _still_running(known: dict[int, float], psutil) -> list:
    """The recorded processes still alive, plus what they started since the last look."""
    alive = {}
    for pid, created in known.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() != created:
                continue
            alive[pid] = proc
            for child in proc.children(recursive=True):
                alive.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(alive.values())


def _end(procs: list, psutil) -> None:
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is for the caller; we clean up after it
    _watch(int(sys.argv[1]))
