"""One writer per folder: a lock (the `filelock` library, an OS file lock) on what a run writes.

A run, `distill`, the sweep and the notebooks' stage calls hold `folder_lock` on the folder or table they write. A
second run on it stops at once with one line naming the holder (pid, host, command, since when, from the side file
`.<name>.lock.json` next to the lock `.<name>.lock`) and the way out, or waits for it (`wait`, the `--wait` flag or
BOOMERANG_WAIT). The OS releases the lock of a killed process; its leftover side file is reported as stale and
replaced, and the rerun resumes. Locks are reentrant in a process and passed on to its child processes
(BOOMERANG_LOCKS_HELD), so that `boomerang run`'s notebook kernels write the folders their parent holds.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from .atomic import StopRun, atomic_write_text

WAIT_ENV = "BOOMERANG_WAIT"
"""Seconds to wait for a folder another run holds ("forever" or "inf": no limit); unset or 0: stop at once."""
HELD_ENV = "BOOMERANG_LOCKS_HELD"
"""The lock files held by this process or the process that started it (os.pathsep-separated)."""

_held: dict[str, list] = {}  # lock file -> [FileLock, depth] of the locks this process holds


class FolderBusy(StopRun):
    """Another live process holds the folder's lock."""


def lock_file(target: str | Path) -> Path:
    """The lock of `target` (a folder or a file): `.<name>.lock` next to it, so that it outlives a replaced folder."""
    target = Path(target).resolve()
    return target.with_name(f".{target.name}.lock")


def holder_file(target: str | Path) -> Path:
    """The side file naming the lock's holder (pid, host, command, since)."""
    return lock_file(target).with_name(lock_file(target).name + ".json")


def holder(target: str | Path) -> dict | None:
    """What the side file says of the lock's holder (None: no holder recorded)."""
    try:
        return json.loads(holder_file(target).read_text())
    except (OSError, ValueError):
        return None


def wait_seconds(wait: float | str | None = None) -> float:
    """`wait` or BOOMERANG_WAIT as seconds (-1: forever; 0: stop at once)."""
    value = os.environ.get(WAIT_ENV, "0") if wait is None else wait
    text = str(value).strip().lower()
    if text in ("forever", "inf", "true", "yes"):
        return -1
    if text in ("", "false", "no"):
        return 0
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{WAIT_ENV}/--wait must be a number of seconds or 'forever', got {value!r}.") from None
    return -1 if seconds < 0 or seconds == float("inf") else seconds


def is_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(info: dict | None) -> str:
    if not info:
        return "another process (it has not recorded itself yet)"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}), since {info.get('since')}"


def busy_message(target: Path, info: dict | None, waited: float) -> str:
    """One line: what is busy, who holds it, and the ways out."""
    stop = (
        "stop it"
        if not info
        else f"stop it (kill {info.get('pid')}"
        + (")" if info.get("host") == socket.gethostname() else f" on {info.get('host')})")
    )
    after = f" after waiting {waited:.0f} s" if waited > 0 else ""
    return (
        f"{target} is in use by {describe(info)}{after}; wait for it to finish, {stop}, write elsewhere "
        f"(--out/--results), or queue behind it with --wait (or {WAIT_ENV}=seconds|forever)."
    )


def _command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("boomerang", "cli.py", "__main__.py"):
        argv[0] = "boomerang"
    if argv and "ipykernel" in argv[0]:
        return "a notebook kernel"
    return shlex.join(argv)[:200] or "python"


def _inherited() -> set[str]:
    return set(filter(None, os.environ.get(HELD_ENV, "").split(os.pathsep)))


def _set_inherited(paths: set[str]) -> None:
    if paths:
        os.environ[HELD_ENV] = os.pathsep.join(sorted(paths))
    else:
        os.environ.pop(HELD_ENV, None)


@contextmanager
def folder_lock(target: str | Path, wait: float | str | None = None, every_rank: bool = False, quiet: bool = False):
    """Hold the lock on `target` (a folder or a file) for the block; FolderBusy (one line) if another process holds it
    beyond `wait` seconds (default BOOMERANG_WAIT, else 0: stop at once; -1 or "forever": wait without limit).

    Under torchrun/accelerate only rank 0 takes it (the job is one writer) unless `every_rank`."""
    if not every_rank and int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    target = Path(target).resolve()
    path = lock_file(target)
    key = str(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    if key in _inherited():  # held by the process that started this one (boomerang run -> notebook kernel)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, thread_local=False)
    seconds, start = wait_seconds(wait), time.monotonic()
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if seconds == 0:
            raise FolderBusy(busy_message(target, holder(target), 0)) from None
        if not quiet:
            limit = "without limit" if seconds < 0 else f"up to {seconds:.0f} s"
            print(f"[lock] {target} is in use by {describe(holder(target))}; waiting {limit}", flush=True)
        try:
            lock.acquire(timeout=seconds, poll_interval=0.2)
        except Timeout:
            raise FolderBusy(busy_message(target, holder(target), time.monotonic() - start)) from None
    try:
        left = holder(target)  # a holder that released would have removed it: this one was killed
        if left and not quiet:
            gone = (
                "is gone"
                if left.get("host") == socket.gethostname() and not is_alive(int(left.get("pid", 0)))
                else "no longer holds it"
            )
            print(f"[lock] {target}: took over the stale lock of {describe(left)}, which {gone}", flush=True)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": _command(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(holder_file(target), json.dumps(info) + "\n")
        _held[key] = [lock, 1]
        _set_inherited(_inherited() | {key})
        try:
            yield
        finally:
            del _held[key]
            _set_inherited(_inherited() - {key})
            holder_file(target).unlink(missing_ok=True)
    finally:
        lock.release()


@contextmanager
def folder_locks(*targets: str | Path | None, **options):
    """`folder_lock` on each of `targets` (None skipped, duplicates once), taken in a fixed order."""
    unique = sorted({str(Path(t).resolve()) for t in targets if t is not None})
    with ExitStack() as stack:
        for target in unique:
            stack.enter_context(folder_lock(target, **options))
        yield


@contextmanager
def write_lock(path: str | Path):
    """A short lock around one read-modify-write of a shared file (`.<name>.write.lock`); every process waits."""
    path = Path(path).resolve()
    lock = path.with_name(f".{path.name}.write.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock, thread_local=False):
        yield
