"""One writer per folder: real processes hold the lock, a second writer stops naming the holder, a killed holder's
lock is taken over and its distillation resumed, concurrent appends to one table lose no row.

Run as a script it is the worker of these tests: `hold DIR` holds DIR's lock until killed, `distill OUT` distils a
tiny student into OUT slowly (so that it can be killed between checkpoints), `append TABLE START` appends rows.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
if __name__ == "__main__":  # a worker: boomerang_lab.store.locks without the package's torch imports (seconds less)
    import types

    sys.modules["boomerang_lab"] = types.ModuleType("boomerang_lab")
    sys.modules["boomerang_lab"].__path__ = [str(ROOT / "boomerang_lab")]

from boomerang_lab.store.locks import FolderBusy, folder_lock, holder, lock_file  # noqa: E402


def worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE.parent}", "OMP_NUM_THREADS": "1"}
    env.pop("BOOMERANG_LOCKS_HELD", None)
    return subprocess.Popen(
        [sys.executable, str(HERE), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 60) -> None:
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early: {proc.stdout.read()}")
        if time.monotonic() - start > timeout:
            raise AssertionError("worker too slow")
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_second_writer_stops_naming_the_holder_and_takes_over_after_kill_9(tmp_path, capsys):
    target = tmp_path / "student"
    proc = worker("hold", str(target))
    try:
        wait_for(lambda: holder(target) is not None, proc)
        with pytest.raises(FolderBusy) as err:
            with folder_lock(target):
                pass
        line = str(err.value)
        assert "\n" not in line
        for part in (str(target), f"pid {proc.pid}", socket.gethostname(), "hold", "since", "--wait", "kill"):
            assert part in line
    finally:
        kill(proc)
    capsys.readouterr()
    with folder_lock(target):  # the OS released the killed holder's lock; its side file is reported stale
        assert holder(target)["pid"] == os.getpid()
    assert f"took over the stale lock of pid {proc.pid}" in capsys.readouterr().out
    assert holder(target) is None and lock_file(target).exists()


def test_wait_queues_behind_the_holder(tmp_path):
    target = tmp_path / "results.csv"
    proc = worker("hold", str(target), "1.5")
    try:
        wait_for(lambda: holder(target) is not None, proc)
        start = time.monotonic()
        with folder_lock(target, wait="forever"):
            assert time.monotonic() - start > 0.5  # got it only once the holder let go (it held it 1.5 s)
    finally:
        proc.wait()
        proc.stdout.close()


def test_locks_are_reentrant_and_passed_to_child_processes(tmp_path):
    target = tmp_path / "out"
    with folder_lock(target), folder_lock(target):  # a notebook stage inside `boomerang run`: no self-deadlock
        child = subprocess.run(  # the worker takes the lock for 0 s: it may, holding it through its parent
            [sys.executable, str(HERE), "hold", str(target), "0"],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
        )
        assert child.returncode == 0, child.stdout + child.stderr


def test_a_second_boomerang_run_stops_at_once_with_one_line(tmp_path):
    out = tmp_path / "smoke"
    proc = worker("hold", str(out / "results.csv"))
    try:
        wait_for(lambda: holder(out / "results.csv") is not None, proc)
        start = time.monotonic()
        from boomerang_lab.study.cli import main

        with pytest.raises(SystemExit) as err:
            main(["run", "--profile", "smoke", "--out", str(out)])
        assert time.monotonic() - start < 10
        message = str(err.value.code)
        assert message.startswith(f"boomerang run: {out / 'results.csv'} is in use by pid {proc.pid}")
        assert "\n" not in message
        assert not list(out.glob("*.ipynb"))  # no notebook ran
    finally:
        kill(proc)


def test_killed_distillation_lock_is_taken_over_and_the_rerun_resumes(tmp_path, capsys):
    out = tmp_path / "student"
    proc = worker("distill", str(out))
    checkpoint = out.with_name("student.partial") / "global" / "checkpoint-2" / "manifest.json"
    try:
        wait_for(checkpoint.exists, proc, timeout=120)
        with pytest.raises(FolderBusy, match=f"pid {proc.pid}"):
            tiny_distill(out)
    finally:
        kill(proc)
    capsys.readouterr()
    tiny_distill(out)
    printed = capsys.readouterr().out
    assert f"took over the stale lock of pid {proc.pid}" in printed
    assert "resumed at step 2" in printed
    assert (out / "manifest.json").exists()


def test_concurrent_appends_lose_and_duplicate_no_row(tmp_path):
    table = tmp_path / "r.csv"
    procs = [worker("append", str(table), str(start)) for start in (0, 20)]  # rows 0..29 and 20..49
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stdout.read()
        proc.stdout.close()
    from boomerang_lab.evaluate.sweep import read_results

    rows = read_results(table)
    assert sorted(rows.k.astype(int)) == list(range(50))


# --- the workers ---------------------------------------------------------------------------------------------------
def tiny_distill(out: Path, slow: float = 0.0):
    """Distil a tiny Llama for 6 steps (checkpoints every 2), sleeping `slow` s once checkpoint-2 is written."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from boomerang_lab.config.profiles import distill_config as profile
    from boomerang_lab.distill.trainer import distill
    from boomerang_lab.models.plan import LayerPlan
    from boomerang_lab.models.student import init_student
    from tiny import VOCAB, tiny_model

    class Slow(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:  # checkpoint-2 and its manifest are written
                time.sleep(slow)

    teacher = tiny_model("llama", layers=4)
    plan = LayerPlan.from_kept([0, 2, 3], 4)
    ids = torch.randint(0, VOCAB, (32, 8), generator=torch.Generator().manual_seed(0))
    config = profile("smoke", output_dir=str(out), batch_size=4, max_steps=6, save_steps=2, use_cpu=True)
    data = Dataset.from_dict({"input_ids": ids.tolist()})
    return distill(teacher, init_student(teacher, plan), plan, data, config, callbacks=[Slow()], progress=True)


def _append(table: str, start: int) -> None:
    import pandas as pd

    from boomerang_lab.evaluate.sweep import COLUMNS, append_results

    for k in range(start, start + 30):
        row = {c: "x" for c in COLUMNS} | {"k": k, "value": 1.0, "stderr": 0.0, "limit": 1, "params": 1}
        append_results(pd.DataFrame([row], columns=COLUMNS), table)


if __name__ == "__main__":
    task, path, *rest = sys.argv[1:]
    if task == "hold":
        with folder_lock(path):
            time.sleep(float(rest[0]) if rest else 600)
    elif task == "distill":
        tiny_distill(Path(path), slow=30)
    elif task == "append":
        _append(path, int(rest[0]))
