"""Child processes (servers) that cannot outlive the tests.

Each one starts in a process group of its own, so stopping it reaches the workers it forks,
and with a parent-death signal (Linux), so a test run that is killed, even with SIGKILL,
takes its servers with it instead of leaving them on their ports."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from tests.support.wait import wait_until

_PR_SET_PDEATHSIG = 1
# Loaded before any fork: the child between fork and exec should only make the system call.
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# Every process started here and not stopped yet, for a last sweep when the test run ends.
_live: set[subprocess.Popen[bytes]] = set()


def _die_with_parent(parent: int) -> Callable[[], None]:
    def prepare() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died before prctl: then no signal will ever come.
        if os.getppid() != parent:
            os._exit(1)

    return prepare


def spawn(command: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen in a new process group that is killed when this process (thread) dies.

    The parent-death signal follows the thread that forks: start servers from the thread
    that runs the tests, not from a short-lived helper thread."""
    preexec = _die_with_parent(os.getpid()) if sys.platform == "linux" else None
    process: subprocess.Popen[bytes] = subprocess.Popen(
        command, start_new_session=True, preexec_fn=preexec, **kwargs
    )
    _live.add(process)
    return process


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group; zombies hold no ports and are left out (a reaper
    in a container may be slow to collect them)."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def kill_group(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGKILL the process and everything in its group, and wait until all are gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait(timeout)
    # Orphaned workers must be gone before a restart binds the port again, or the kernel
    # could still hand connections to their listening sockets.
    wait_until(
        lambda: not group_members(process.pid),
        timeout,
        lambda: f"process group {process.pid} to exit: {group_members(process.pid)}",
    )
    _live.discard(process)


def terminate(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM the process (it stops its own workers); what is left after `timeout` seconds,
    or once it has exited, is killed with the whole group. Returns its exit code."""
    try:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        raise
    kill_group(process)
    return code


def kill_all() -> None:
    for process in list(_live):
        kill_group(process)
