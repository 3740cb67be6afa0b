"""Damaged files are named before use, a damaged latest checkpoint falls back to the one before it, the student's
files get the usual permissions, and a full disk (a real, size-limited tmpfs) stops a run with the previous good state
kept and the rerun resuming once space is back."""

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from boomerang_lab.config.profiles import distill_config as profile
from boomerang_lab.distill.trainer import distill
from boomerang_lab.evaluate.sweep import COLUMNS, append_results, read_results
from boomerang_lab.models.loading import load_student
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.models.student import init_student
from boomerang_lab.store.atomic import DiskFull
from boomerang_lab.store.manifest import MANIFEST, DamagedFile, problem
from tiny import VOCAB, tiny_model


class StopAt(TrainerCallback):
    """Raise `error` at the end of step `step` (a killed job), or call `action` there."""

    def __init__(self, step: int, action=None):
        self.step, self.action = step, action

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            if self.action is None:
                raise KeyboardInterrupt
            self.action()


def distil(out: Path, callbacks=()) -> Path:
    """A tiny Llama distilled for 6 steps, checkpoints every 2."""
    teacher = tiny_model("llama", layers=4)
    plan = LayerPlan.from_kept([0, 2, 3], 4)
    ids = torch.randint(0, VOCAB, (32, 8), generator=torch.Generator().manual_seed(0))
    config = profile("smoke", output_dir=str(out), batch_size=4, max_steps=6, save_steps=2, use_cpu=True)
    data = Dataset.from_dict({"input_ids": ids.tolist()})
    return distill(teacher, init_student(teacher, plan), plan, data, config, callbacks=callbacks, progress=True)


def cut_to_half(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def test_student_files_get_the_usual_permissions_and_a_manifest(tmp_path):
    out = distil(tmp_path / "student")
    usual = 0o666 & ~_umask()
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {name: usual for name in modes}, modes  # model.safetensors was 0600
    assert "model.safetensors" in modes and MANIFEST in modes and problem(out) is None


def test_a_damaged_student_is_named_with_the_fix(tmp_path):
    out = distil(tmp_path / "student")
    weights = out / "model.safetensors"
    original = weights.read_bytes()
    cut_to_half(weights)
    for reuse in (lambda: distil(out), lambda: load_student(out)):
        with pytest.raises(DamagedFile) as err:
            reuse()
        line = str(err.value)
        assert str(weights) in line and "delete" in line and "\n" not in line
    flipped = bytearray(original)
    flipped[-1] ^= 0xFF  # same size, wrong bytes
    weights.write_bytes(bytes(flipped))
    with pytest.raises(DamagedFile, match="sha256"):
        distil(out)


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    out = tmp_path / "student"
    with pytest.raises(KeyboardInterrupt):
        distil(out, callbacks=[StopAt(5)])  # checkpoints 2 and 4 written
    stage = out.with_name("student.partial") / "global"
    cut_to_half(stage / "checkpoint-4" / "model.safetensors")
    capsys.readouterr()
    distil(out)
    printed = capsys.readouterr().out
    assert f"{stage / 'checkpoint-4' / 'model.safetensors'} is damaged" in printed
    assert "resumed at step 2" in printed
    assert problem(out) is None


def test_a_damaged_results_table_is_named(tmp_path):
    table = tmp_path / "r.csv"
    rows = pd.DataFrame([{c: "x" for c in COLUMNS} | {"k": k, "value": 1.0} for k in range(20)], columns=COLUMNS)
    append_results(rows, table)
    cut_to_half(table)
    with pytest.raises(DamagedFile, match=f"{table} is damaged .*incomplete.*restore it"):
        read_results(table)
    table.write_bytes(b"\x00\xff" * 100)
    with pytest.raises(DamagedFile, match=f"{table} is damaged"):
        read_results(table)


# --- a full disk ---------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs mounted here (needs root; CI runs as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({done.stderr.strip() or 'mount failed'}); needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` up to `leave` bytes free with one file (real writes until ENOSPC)."""
    filler = disk / "filler"
    with open(filler, "ab") as f:
        try:
            while shutil.disk_usage(disk).free > leave:
                f.write(b"\0" * min(1 << 16, max(4096, shutil.disk_usage(disk).free - leave)))
                f.flush()
        except OSError:
            pass
    return filler


def test_full_disk_while_checkpointing_keeps_the_last_good_one_and_resumes(small_disk, capsys):
    out = small_disk / "student"
    with pytest.raises(DiskFull) as err:
        distil(out, callbacks=[StopAt(3, action=lambda: fill(small_disk))])  # checkpoint-4 meets a full disk
    line = str(err.value)
    stage = out.with_name("student.partial") / "global"
    assert "No space left on device" in line and f"{stage / 'checkpoint-2'} is kept" in line and "rerun" in line
    assert [p.name for p in stage.glob("checkpoint-*")] == ["checkpoint-2"] and problem(stage / "checkpoint-2") is None
    (small_disk / "filler").unlink()
    capsys.readouterr()
    distil(out)
    assert "resumed at step 2" in capsys.readouterr().out
    assert problem(out) is None and not stage.parent.exists()


def test_full_disk_while_saving_the_student_keeps_the_checkpoints(small_disk, capsys):
    out = small_disk / "student"

    class FillAtEnd(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            fill(small_disk)

    with pytest.raises(DiskFull, match="No space left on device while writing .*are kept"):
        distil(out, callbacks=[FillAtEnd()])
    assert not out.exists() and not list(small_disk.glob(".student*.tmp"))
    (small_disk / "filler").unlink()
    capsys.readouterr()
    distil(out)
    assert "resumed at step 6" in capsys.readouterr().out and problem(out) is None


def test_full_disk_while_writing_the_table_keeps_it_and_resumes(small_disk):
    table = small_disk / "r.csv"
    rows = pd.DataFrame([{c: "x" for c in COLUMNS} | {"k": k, "value": 1.0} for k in range(40)], columns=COLUMNS)
    append_results(rows[:20], table)
    before = table.read_bytes()
    fill(small_disk, leave=1024)  # room for less than the table
    with pytest.raises(DiskFull, match=f"No space left on device while writing {table}.*kept as it was"):
        append_results(rows[20:], table)
    assert table.read_bytes() == before
    (small_disk / "filler").unlink()
    assert len(append_results(rows, table)) == 40  # the rerun adds the missing rows, none twice


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
