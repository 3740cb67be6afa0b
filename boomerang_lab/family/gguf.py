"""Any family member as a GGUF file that llama.cpp runs: the metadata and tensor layout llama.cpp's
convert_hf_to_gguf.py writes for LlamaForCausalLM and Qwen3ForCausalLM, written with the `gguf` package.

With a `reference` GGUF (the embedded teacher's own Q4_1 file), every member tensor whose values equal a reference
tensor's dequantised values, at the type this export writes, is copied byte for byte (teacher layers keep their
shipped Q4_1 bytes); the reference's tokenizer metadata is copied too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel

from ..store.atomic import atomic_path
from .speed import NEW_TOKENS, PROMPT_TOKENS, REPEATS

QUANTS = ("f32", "f16", "q8_0", "q4_1")
"""Weight formats of an export; 1-D tensors (norms) stay F32, as in llama.cpp's own converter."""
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen3": gguf.MODEL_ARCH.QWEN3}
"""transformers model_type -> llama.cpp architecture, for the architectures whose export is tested in llama.cpp."""

_Q = gguf.GGMLQuantizationType
_MATRIX = {"f32": _Q.F32, "f16": _Q.F16, "q8_0": _Q.Q8_0, "q4_1": _Q.Q4_1}
_EMBEDDING = {"f32": _Q.F32, "f16": _Q.F16, "q8_0": _Q.Q8_0, "q4_1": _Q.Q8_0}  # llama-quantize keeps it 8-bit
_FILE_TYPE = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
}


def check_exportable(model_type: str, quant: str) -> None:
    """One-line errors for an architecture llama.cpp cannot take from this exporter, or an unknown quant."""
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"Cannot export architecture {model_type!r} to GGUF; supported: {', '.join(sorted(ARCHITECTURES))} "
            f"(use format='hf' for the others)."
        )
    if quant not in QUANTS:
        raise ValueError(f"Unknown GGUF quant {quant!r}; use one of {', '.join(QUANTS)}.")


def write_gguf(
    model: PreTrainedModel,
    path: str | Path,
    quant: str = "f16",
    tokenizer=None,
    reference: str | Path | None = None,
    layer_sources: Sequence[int | None] | None = None,
    name: str | None = None,
) -> dict:
    """Write `model` (a member, or any Llama/Qwen3 causal LM) as a GGUF file at `path` (atomically).

    `reference`: a GGUF whose tensors may be copied byte for byte (see the module) and whose tokenizer metadata is
    copied; `layer_sources[p]` is the reference block a member layer p may equal (its teacher layer), None for none.
    Without a reference, the tokenizer metadata comes from `tokenizer` (a fast BPE tokenizer), or, without one, a
    placeholder vocabulary (llama.cpp then runs token ids; its text tokenisation means nothing).
    Returns {"path", "bytes", "copied": tensors copied from the reference, "written": tensors converted here}.
    """
    config = model.config
    check_exportable(config.model_type, quant)
    arch = ARCHITECTURES[config.model_type]
    path = Path(path)
    reader = gguf.GGUFReader(reference) if reference is not None else None
    ref_tensors = {t.name: t for t in reader.tensors} if reader is not None else {}
    n_layers = config.num_hidden_layers
    names = gguf.get_tensor_name_map(arch, n_layers)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    copied = written = 0

    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        _write_metadata(writer, config, quant, head_dim, name or getattr(model, "name_or_path", "") or "member")
        _write_tokenizer(writer, config, tokenizer, reader)
        tied = getattr(config, "tie_word_embeddings", False) and (
            model.get_output_embeddings().weight is model.get_input_embeddings().weight
        )
        writer_kv = config.num_key_value_heads
        for hf_name, tensor in model.state_dict().items():
            if tied and hf_name == "lm_head.weight":
                continue
            out = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if out is None:
                if "rotary_emb" in hf_name:
                    continue
                raise ValueError(f"No GGUF name for tensor {hf_name!r} of {type(model).__name__}.")
            data = tensor.detach().to(torch.float32).cpu().numpy()
            if arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith("q_proj.weight"):
                data = _permute(data, config.num_attention_heads, config.num_attention_heads)
            elif arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith("k_proj.weight"):
                data = _permute(data, config.num_attention_heads, writer_kv)
            qtype = _target_type(out, data, quant)
            raw = _reference_bytes(out, data, qtype, ref_tensors, layer_sources)
            if raw is not None:
                writer.add_tensor(out, raw, raw_dtype=qtype)
                copied += 1
                continue
            try:
                writer.add_tensor(out, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
            except gguf.quants.QuantError:  # a row length not a multiple of the block size: as the converter does
                writer.add_tensor(out, data.astype(np.float16), raw_dtype=_Q.F16)
            written += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"path": path, "bytes": path.stat().st_size, "copied": copied, "written": written}


def _write_metadata(writer: gguf.GGUFWriter, config, quant: str, head_dim: int, name: str) -> None:
    scaling = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
    if kind not in ("default", None):
        raise ValueError(f"Cannot export rope scaling {kind!r} to GGUF; supported: 'default' (no scaling).")
    theta = getattr(config, "rope_theta", None) or (scaling.get("rope_theta") if isinstance(scaling, dict) else None)
    writer.add_name(str(name))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(theta if theta is not None else 10000.0))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(_FILE_TYPE[quant])
    if quant in ("q8_0", "q4_1"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(writer: gguf.GGUFWriter, config, tokenizer, reader: gguf.GGUFReader | None) -> None:
    if reader is not None:
        for key, field in reader.fields.items():
            if key.startswith("tokenizer."):
                sub = field.types[1] if len(field.types) > 1 else None
                writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
        return
    n = config.vocab_size
    if tokenizer is None:
        # placeholder: one printable byte-level symbol per id, token 0 a control token, one merge
        symbols = [chr(0x100 + i) for i in range(n)]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(["<|endoftext|>", *symbols[1:]])
        writer.add_token_types([gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (n - 1))
        writer.add_token_merges([f"{symbols[1]} {symbols[2]}"])
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(0)
        writer.add_add_bos_token(False)
        return
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    if data["model"]["type"] != "BPE":
        raise ValueError(f"GGUF export takes BPE tokenizers; this one is {data['model']['type']!r}.")
    vocab = tokenizer.get_vocab()
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for token, i in vocab.items():
        if i < n:
            tokens[i] = token
            special = added.get(i, {}).get("special")
            types[i] = (
                gguf.TokenType.CONTROL
                if special
                else gguf.TokenType.USER_DEFINED
                if i in added
                else gguf.TokenType.NORMAL
            )
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            setter(int(token_id))
    writer.add_add_bos_token(False)


def _target_type(out: str, data: np.ndarray, quant: str) -> gguf.GGMLQuantizationType:
    if data.ndim < 2:
        return _Q.F32
    if out.startswith(("token_embd", "output.")):
        return _EMBEDDING[quant]
    return _MATRIX[quant]


def _reference_bytes(out, data, qtype, ref_tensors, layer_sources) -> np.ndarray | None:
    """The reference tensor's raw bytes when it has this type and exactly these (dequantised) values, else None."""
    if not ref_tensors:
        return None
    source = out
    if out.startswith("blk."):
        _, index, rest = out.split(".", 2)
        p = int(index)
        origin = layer_sources[p] if layer_sources is not None and p < len(layer_sources) else None
        if origin is None:
            return None
        source = f"blk.{origin}.{rest}"
    ref = ref_tensors.get(source)
    if ref is None or ref.tensor_type != qtype:
        return None
    values = gguf.quants.dequantize(np.asarray(ref.data), ref.tensor_type).reshape(data.shape)
    if not np.array_equal(values.astype(np.float32), data):
        return None
    return np.asarray(ref.data)


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's (convert_hf_to_gguf LlamaModel.permute) q/k row order for its rotary embedding."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


# --- running a GGUF in llama.cpp (llama-cpp-python, the [deploy] extra) ---------------------------------------------
def llama_cpp_model(path: str | Path, n_ctx: int = 512, n_threads: int = 2, logits_all: bool = True):
    """A `llama_cpp.Llama` on `path` (quiet; every position's logits kept with `logits_all`)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ModuleNotFoundError(
            "Running a GGUF needs llama-cpp-python (the [deploy] extra): "
            'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
            "pip install -c constraints.txt llama-cpp-python"
        ) from None
    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=n_threads,
        logits_all=logits_all,
        verbose=False,
    )


def llama_cpp_logits(llm, tokens: Sequence[int]) -> np.ndarray:
    """llama.cpp's logits (float32, positions x vocabulary) for token ids, from a fresh context."""
    llm.reset()
    llm.eval(list(map(int, tokens)))
    return np.array(llm.scores[: llm.n_tokens], dtype=np.float32)


def llama_cpp_greedy(llm, tokens: Sequence[int], new_tokens: int) -> list[int]:
    """Greedy continuation (argmax at every step) of token ids in llama.cpp: the new token ids."""
    llm.reset()
    llm.eval(list(map(int, tokens)))
    out = []
    for _ in range(new_tokens):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def llama_cpp_ms_per_token(
    llm, new_tokens: int = NEW_TOKENS, prompt_tokens: int = PROMPT_TOKENS, repeats: int = REPEATS
) -> float:
    """Milliseconds per generated token in llama.cpp, measured as `speed.ms_per_token` measures torch: greedy
    decoding of exactly `new_tokens` tokens after the same `prompt_tokens`-token prompt (its evaluation timed too),
    batch 1, after one untimed warm-up; the best of `repeats` runs."""
    prompt = [i % llm.n_vocab() for i in range(1, prompt_tokens + 1)]

    def run(n: int) -> None:
        llm.reset()
        llm.eval(prompt)
        for _ in range(n):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])

    run(2)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(new_tokens)
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best / new_tokens


def perplexity_from_logits(logits: np.ndarray, tokens: Sequence[int]) -> float:
    """exp(mean negative log-likelihood of tokens[1:] given their prefix) from one window's logits."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float32)).double()
    target = torch.as_tensor(list(tokens))[1:]
    nll = torch.nn.functional.cross_entropy(logits[:-1], target)
    return float(torch.exp(nll))
