"""Atomic writes: all or nothing, no temporary files left, and the permissions a plain write would give."""

import os
import stat

import pytest

from boomerang_lab.store.atomic import atomic_dir, atomic_path, atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_a_failed_directory_keeps_the_old_one(tmp_path):
    target = tmp_path / "student"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]
    assert sorted(p.name for p in target.iterdir()) == ["a"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d"):
            pass
        (tmp_path / "plain.txt").write_text("x")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(old)
    assert mode(tmp_path / "f.txt") == mode(tmp_path / "plain.txt") == 0o644
    assert mode(tmp_path / "d") == mode(tmp_path / "plain") == 0o755
