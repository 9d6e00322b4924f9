"""pid_alive: a running process is alive; an exited one is not, reaped or still a zombie."""

from __future__ import annotations

import os
import subprocess
import time

from softudc.pids import pid_alive


def test_a_running_process_is_alive_and_an_exited_one_is_not_even_before_it_is_reaped() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
    deadline = time.monotonic() + 5
    while pid_alive(child.pid) and time.monotonic() < deadline:  # a zombie until wait() below
        time.sleep(0.01)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
