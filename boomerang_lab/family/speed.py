"""Generation speed of a family's members on this machine: milliseconds per generated token, measured once per
member and cached (in memory, and optionally in a small JSON file next to the student)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch
from transformers import PreTrainedModel

from ..store.atomic import atomic_write_text

SPEED_FILE = "speed.json"
"""The cache's default file name inside a student directory."""
PROMPT_TOKENS = 8
NEW_TOKENS = 12
REPEATS = 3


def machine() -> str:
    """Names where a measurement was taken: host, processor, torch threads (speeds from elsewhere are not reused)."""
    return f"{platform.node()}|{platform.machine()}|{platform.processor() or '?'}|threads={torch.get_num_threads()}"


@torch.no_grad()
def ms_per_token(
    model: PreTrainedModel,
    new_tokens: int = NEW_TOKENS,
    prompt_tokens: int = PROMPT_TOKENS,
    timer: Callable[[], float] = time.perf_counter,
    repeats: int = REPEATS,
) -> float:
    """Milliseconds per generated token: greedy decoding (with the KV cache) of exactly `new_tokens` tokens after a
    `prompt_tokens`-token prompt, batch 1, after one untimed warm-up; the best of `repeats` runs."""
    device = next(model.parameters()).device
    ids = torch.arange(1, prompt_tokens + 1, device=device).unsqueeze(0) % model.config.vocab_size
    kwargs = dict(
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=getattr(model.generation_config, "pad_token_id", None) or 0,
    )
    model.generate(ids, **{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = timer()
        model.generate(ids, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, timer() - start)
    return 1000.0 * best / new_tokens


class SpeedCache:
    """ms/token per member key, remembered in memory and (when `path` is set) in a JSON file, per machine."""

    def __init__(self, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self._memory: dict[str, float] = {}

    def key(self, model: PreTrainedModel, patched: list[int], new_tokens: int) -> str:
        param = next(model.parameters())
        return f"{machine()}|{param.device}|{param.dtype}|tokens={new_tokens}|patched={sorted(patched)}"

    def _file(self) -> dict:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except ValueError:  # a damaged cache is measured again
            return {}

    def get(self, key: str) -> float | None:
        if key not in self._memory and key in (stored := self._file()):
            self._memory[key] = float(stored[key])
        return self._memory.get(key)

    def put(self, key: str, value: float) -> None:
        self._memory[key] = value
        if self.path is not None:
            stored = self._file() | {key: value}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(stored, indent=1, sort_keys=True) + "\n")
