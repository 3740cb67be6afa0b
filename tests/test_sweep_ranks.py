"""The sweep split across processes (torchrun): each rank evaluates its share of the cells into the one table,
the result equals the one-process sweep row for row, and a rank killed mid-way is resumed by the rerun."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from boomerang_lab.evaluate.sweep import KEY, rank_share, read_results
from boomerang_lab.study.cli import main

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["evaluate", "--profile", "smoke", "--ks", "0", "1", "3"]  # tiny random teacher, perplexity and arc_easy


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    env.pop("BOOMERANG_LOCKS_HELD", None)
    return env


def _torchrun(results: Path) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "boomerang_lab.study.cli",
        *SMOKE,
        "--results",
        str(results),
    ]


def _rows(path: Path) -> pd.DataFrame:
    table = read_results(path).drop(columns="timestamp")
    return table.sort_values(KEY + ["metric"]).reset_index(drop=True)


def test_ranks_share_every_cell_once_with_each_task_split(monkeypatch):
    cells = {(m, t): (m, t) for m in range(5) for t in ("ppl", "arc")}
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        shares.append(rank_share(cells))
    assert set(shares[0]) | set(shares[1]) == set(cells) and not set(shares[0]) & set(shares[1])
    for share in shares:
        assert {t for _, t in share} == {"ppl", "arc"}  # each rank its share of the costly task


def test_two_processes_equal_one_and_a_killed_rank_is_resumed(tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    main([*SMOKE, "--results", str(one)])
    # rank 1 of 2 alone, killed with -9 once its first rows are in the table
    alone = subprocess.Popen(
        [sys.executable, "-m", "boomerang_lab.study.cli", *SMOKE, "--results", str(two)],
        env=_env(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    start = time.monotonic()
    while not two.exists() and alone.poll() is None and time.monotonic() - start < 120:
        time.sleep(0.02)
    alone.send_signal(signal.SIGKILL)
    alone.wait()
    partial = read_results(two)
    assert 0 < len(partial) < len(read_results(one))
    done = subprocess.run(_torchrun(two), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "(process 0 of 2" in done.stdout and "(process 1 of 2" in done.stdout
    pd.testing.assert_frame_equal(_rows(two), _rows(one))
