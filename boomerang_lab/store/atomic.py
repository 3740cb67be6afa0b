"""Write files so that a reader never sees a half-written one, and a full disk leaves the previous file as it was."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


class StopRun(RuntimeError):
    """A run stopped for a reason its one-line message names, with the way out (the CLI prints just that line)."""


class DiskFull(StopRun):
    """No space left on the device while saving; the previous good state is kept and a rerun resumes."""


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary file path next to `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with disk_full_stops(path):
            yield Path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | Path, kept: str | None = None):
    """Yield a temporary directory next to `path`; it becomes `path` (replacing any old one) only on success.

    Every file and folder in it gets the permissions plain open()/mkdir would give (the umask's): some writers
    (safetensors, mkstemp) create their files 0600. A full disk raises DiskFull, naming what is `kept`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with disk_full_stops(path, kept):
            yield tmp
            usual_permissions(tmp)
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def usual_permissions(folder: str | Path) -> None:
    """Give `folder`, and every file and folder under it, the permissions the umask gives new ones (0644/0755)."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` (or an error it was raised from) is "no space left on device", however the writer reports it
    (OSError errno 28, torch's "file write failed", safetensors' "os error 28")."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DiskFull) or getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if "No space left" in text or "os error 28" in text or "file write failed" in text:
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full_message(path: str | Path, kept: str) -> str:
    """One line: where the disk filled up, what is kept, how much is free, and the way out."""
    path = Path(path)
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free / 2**20
    return (
        f"No space left on device while writing {path} ({free:.1f} MiB free there now); {kept}. "
        f"Free some space on that disk and rerun the same command to resume."
    )


@contextmanager
def disk_full_stops(path: str | Path, kept: str | None = None):
    """Turn a full disk inside the block into DiskFull, one line naming `path` and what is `kept`."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise DiskFull(
            disk_full_message(path, kept or f"the previous {Path(path).name}, if any, is kept as it was")
        ) from err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
