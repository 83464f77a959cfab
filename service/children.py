"""Child processes that end with the process that owns them, so a `kill -9` of it leaves nothing running."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn for subprocess.Popen: the child gets signum when the thread that started it ends, the
    process killed included (Linux; None elsewhere). Start it from a thread that lives as long as the owner:
    the main thread, or the one that also stops it. libc is looked up here, not in the forked child."""
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:  # the owner died before prctl: no signal would ever come
            os.kill(os.getpid(), signum)

    return preexec
