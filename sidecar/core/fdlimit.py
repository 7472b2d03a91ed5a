"""The open-file limit: raised for the daemon's connections, given back to its children.

The daemon lifts its soft ``RLIMIT_NOFILE`` to the hard limit at start, so a flood of
connections meets the connection caps, not "Too many open files". Its children (the
``exec`` command, token commands) must not inherit that: programs built on ``select()``
break with descriptors above 1024, and some close every possible descriptor at start,
which takes seconds with a limit of a million. So each child gets back, right after it
starts, the soft limit this process was started with.
"""

from __future__ import annotations

import contextlib
import resource

#: The soft limit this process was started with; None until the daemon raised it. Process
#: state, like the limit itself.
_inherited: int | None = None


def raise_open_file_limit() -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard one; (before, after)."""
    global _inherited
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _inherited = soft
    unlimited = resource.RLIM_INFINITY
    # An unlimited hard limit still has a kernel ceiling (nr_open); macOS caps at OPEN_MAX.
    targets = ([] if hard == unlimited else [hard]) + [1 << 20, 10240]
    for target in targets:
        if soft == unlimited or target <= soft or (hard != unlimited and target > hard):
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return soft, target
    return soft, soft


def forget() -> None:
    """Children inherit the current limit again (after the caller put the limit back)."""
    global _inherited
    _inherited = None


def restore_for_child(pid: int) -> None:
    """Give child ``pid`` the soft limit this process was started with (Linux ``prlimit``).

    Done right after the child starts: a child that looks at its limit in its very first
    instructions may still see the raised one. Nothing to do where the limit was not raised,
    the platform has no ``prlimit``, or the child is already gone.
    """
    prlimit = getattr(resource, "prlimit", None)
    if _inherited is None or prlimit is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(OSError, ValueError):
        prlimit(pid, resource.RLIMIT_NOFILE, (_inherited, hard))
