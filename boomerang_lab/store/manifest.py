"""A manifest (size and sha256 of every file) written with a student or checkpoint, checked before it is reused, so
that a damaged file (cut short, wrong bytes) is named in one line with the fix instead of failing deep in a load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .atomic import StopRun

MANIFEST = "manifest.json"
HASH_LIMIT = 4 * 2**30
"""Files larger than this (bytes) get their size only: hashing a large checkpoint's optimizer state at every save
would cost about as much as writing it."""


class DamagedFile(StopRun, ValueError):
    """A file that cannot be used as it is; the message names it and the fix."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path) -> Path:
    """Write `folder`/manifest.json: {"files": {relative path: {"size": bytes, "sha256": hex}}}, written last."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {
            "size": p.stat().st_size,
            "sha256": sha256(p) if p.stat().st_size <= HASH_LIMIT else None,
        }
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    path = folder / MANIFEST
    path.write_text(json.dumps({"files": files}, indent=1) + "\n")
    return path


def problem(folder: str | Path, hashes: bool = True) -> str | None:
    """What is wrong with `folder` by its manifest ("<file> ...: why"), or None when every file matches: sizes
    (a file cut short), then, with `hashes`, the sha256 (wrong bytes). A folder without a manifest (written before
    manifests) passes."""
    folder = Path(folder)
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{folder / MANIFEST} is damaged ({type(err).__name__})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{path} is damaged ({size} bytes, {expected['size']} when written)"
    for name, expected in files.items() if hashes else ():  # sizes first: cheap, and what a cut-short file fails
        if expected["sha256"] is not None and sha256(folder / name) != expected["sha256"]:
            return f"{folder / name} is damaged (its sha256 differs from the one written with it)"
    return None


def check(folder: str | Path, fix: str, hashes: bool = True) -> None:
    """DamagedFile naming the first damaged file of `folder` and `fix`, when its manifest says one is."""
    found = problem(folder, hashes)
    if found:
        raise DamagedFile(f"{found}; {fix}")
