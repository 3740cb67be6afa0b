"""The family on disk, once: the teacher's and the student's tensors (each shared or tied tensor once), the plan and
the saved orders, with a manifest; `load_member` reads only one member's tensors (safetensors' lazy `safe_open`).

Folder layout: `teacher.safetensors`, `student.safetensors` (the student's tensors that are not the teacher's),
`family.json` (which name is stored where), `config.json` (the teacher's), `boomerang_plan.json`,
`order_<name>.json` (saved orders, with their search settings), the tokenizer's files and `manifest.json`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from ..models.adapters import ADAPTERS, set_num_layers
from ..models.loading import embedded_name, resolve_dtype
from ..models.orders import Order, member_layout
from ..models.plan import LayerPlan
from ..store.atomic import atomic_dir
from ..store.locks import folder_lock
from ..store.manifest import check, write_manifest

FAMILY_FILE = "family.json"
FORMAT = 1
BUILT_IN = ("last", "first")


def save_family(family, path: str | Path, tokenizer=None, orders: Sequence[str | Order] = ()) -> Path:
    """Write `family` to the folder `path` (atomically, under its lock) and return it.

    `orders`: orders to keep besides the built-in ones ("last", "first"): names (searched orders are taken from the
    family, or with their search settings from `order_<name>.json` next to the student) or Order objects."""
    path = Path(path)
    teacher, student = family.teacher, family.student
    with folder_lock(path), atomic_dir(path) as tmp:
        stored, by_storage = {}, {}
        teacher_map = {}
        for name, tensor in teacher.state_dict().items():
            key = _storage_key(tensor)
            if key not in by_storage:
                by_storage[key] = name
                stored[name] = tensor.detach().contiguous()
            teacher_map[name] = by_storage[key]
        save_file(stored, tmp / "teacher.safetensors", metadata={"format": "pt"})
        own, student_map, seen = {}, {}, {}
        for name, tensor in student.state_dict().items():
            key = _storage_key(tensor)
            if key in by_storage:
                student_map[name] = ["teacher", by_storage[key]]
                continue
            if key not in seen:
                seen[key] = name
                own[name] = tensor.detach().contiguous()
            student_map[name] = ["student", seen[key]]
        save_file(own, tmp / "student.safetensors", metadata={"format": "pt"})
        teacher.config.save_pretrained(tmp)
        if getattr(teacher, "generation_config", None) is not None:
            teacher.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        family.plan.save(tmp)
        student_dir = Path(student.name_or_path or "")
        for order in orders:
            if isinstance(order, Order):
                order.save(tmp / f"order_{order.name}.json")
            elif student_dir.name and (student_dir / f"order_{order}.json").exists():
                shutil.copy2(student_dir / f"order_{order}.json", tmp / f"order_{order}.json")
            else:
                family.order(order).save(tmp / f"order_{order}.json")
        info = {
            "format": FORMAT,
            "model_type": teacher.config.model_type,
            "teacher_layer_types": getattr(teacher.config, "layer_types", None),
            "student_layer_types": getattr(student.config, "layer_types", None),
            "embedded_teacher": embedded_name(teacher),
            "teacher": teacher_map,
            "student": student_map,
        }
        (tmp / FAMILY_FILE).write_text(json.dumps(info, indent=1) + "\n")
        write_manifest(tmp)
    return path


def family_orders(path: str | Path) -> list[str]:
    """The order names a family folder can build: the built-in ones and its saved `order_<name>.json`."""
    return [*BUILT_IN, *sorted(p.stem[len("order_") :] for p in Path(path).glob("order_*.json"))]


def family_order(path: str | Path, order: str | Order | Sequence = "last", plan: LayerPlan | None = None) -> Order:
    path = Path(path)
    plan = plan or LayerPlan.load(path)
    if isinstance(order, Order):
        return order
    if isinstance(order, str):
        if order in BUILT_IN:
            return getattr(Order, order)(plan)
        saved = path / f"order_{order}.json"
        if not saved.exists():
            raise ValueError(f"Unknown order {order!r} for the family in {path}; saved: {family_orders(path)}.")
        return Order.load(saved)
    return Order.explicit(order, plan)


def member_sizes(path: str | Path, order: str | Order | Sequence = "last") -> list[int]:
    """The layer count of each size k = 0..K of `order` in a family folder (no tensor is read)."""
    plan = LayerPlan.load(path)
    resolved = family_order(path, order, plan)
    return [len(member_layout(plan, resolved.patched(k))) for k in range(resolved.num_sizes + 1)]


def load_member(
    path: str | Path,
    layers: int | None = None,
    k: int | None = None,
    order: str | Order | Sequence = "last",
    dtype: str | torch.dtype | None = None,
) -> PreTrainedModel:
    """Member k (or the member with `layers` layers) of the family saved at `path`, reading only its tensors.

    A normal transformers model whose logits equal `Family.build(k, order)`'s exactly; `member.boomerang` holds k,
    the order, the patched student layers and `tensors_read`/`bytes_read` (what was read from disk)."""
    path = Path(path)
    if not (path / FAMILY_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a family folder (no {FAMILY_FILE}); write one with family.save(dir).")
    check(path, f"write the family folder {path} again (family.save or `boomerang save`)", False)
    info = json.loads((path / FAMILY_FILE).read_text())
    plan = LayerPlan.load(path)
    resolved = family_order(path, order, plan)
    if (layers is None) == (k is None):
        raise ValueError("Give exactly one of layers=N or k=... to load_member.")
    if layers is not None:
        counts = [len(member_layout(plan, resolved.patched(i))) for i in range(resolved.num_sizes + 1)]
        if layers not in counts:
            raise ValueError(
                f"The family has no member with {layers} layers under order {resolved.name!r}; valid: "
                f"{sorted(set(counts))}."
            )
        k = counts.index(layers)
    patched = resolved.patched(k)
    adapter = ADAPTERS[info["model_type"]]
    layer_re = re.compile(rf"^{re.escape(adapter.layers)}\.(\d+)\.(.*)$")

    def where(model: str, name: str) -> tuple[str, str]:
        """(file, key) of a model's tensor `name`."""
        if model == "teacher":
            return "teacher", info["teacher"][name]
        return tuple(info["student"][name])

    wanted: dict[str, tuple[str, str]] = {}
    layout = member_layout(plan, patched)
    per_layer: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for model in ("teacher", "student"):
        for name in info[model]:
            match = layer_re.match(name)
            if match:
                per_layer.setdefault((model, int(match.group(1))), []).append((match.group(2), name))
    for p, (model, i) in enumerate(layout):
        for rest, name in per_layer.get((model, i), []):
            wanted[f"{adapter.layers}.{p}.{rest}"] = where(model, name)
    embed_src = "teacher" if 0 in patched else "student"
    head_src = "teacher" if plan.num_student_layers - 1 in patched else "student"
    for model, prefixes in ((embed_src, adapter.embeddings), (head_src, (adapter.final_norm, adapter.head))):
        for name in info[model]:
            if not layer_re.match(name) and any(name == p or name.startswith(p + ".") for p in prefixes if p):
                wanted[name] = where(model, name)

    config = AutoConfig.from_pretrained(path)
    t_types, s_types = info.get("teacher_layer_types"), info.get("student_layer_types")
    types = [(t_types if m == "teacher" else s_types)[i] for m, i in layout] if t_types and s_types else None
    set_num_layers(config, types, len(layout))
    head_weight = f"{adapter.head}.weight"
    embed_weight = next((n for n in wanted if n.startswith(adapter.embeddings[0]) and n.endswith(".weight")), None)
    config.tie_word_embeddings = head_weight in wanted and wanted[head_weight] == wanted.get(embed_weight)

    state, read, nbytes, opened = {}, {}, 0, {}
    try:
        for target, source in wanted.items():
            if source not in read:
                if source[0] not in opened:
                    opened[source[0]] = safe_open(path / f"{source[0]}.safetensors", framework="pt")
                read[source] = opened[source[0]].get_tensor(source[1])
                nbytes += read[source].numel() * read[source].element_size()
            state[target] = read[source]
    finally:
        opened.clear()
    torch_dtype = resolve_dtype(dtype) or next(iter(read.values())).dtype
    from transformers.initialization import no_init_weights

    with no_init_weights():
        member = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    if dtype is not None:
        state = {n: t.to(torch_dtype) for n, t in state.items()}
    missing, unexpected = member.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        member.tie_weights()
        missing = [m for m in missing if m != head_weight]
    if missing or unexpected:
        raise ValueError(f"Family folder {path} does not match its config: missing {missing}, unexpected {unexpected}.")
    if (path / "generation_config.json").exists():
        member.generation_config = GenerationConfig.from_pretrained(path)
    member.boomerang = {
        "k": k,
        "order": resolved.name,
        "patched": sorted(patched),
        "tensors_read": len(read),
        "bytes_read": nbytes,
        "embedded_teacher": info.get("embedded_teacher"),
        "layer_sources": [i if m == "teacher" else plan.kept[i] for m, i in layout],
    }
    return member.eval()


def _storage_key(tensor: torch.Tensor) -> tuple:
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)


def export_member(
    path: str | Path,
    out: str | Path,
    layers: int | None = None,
    k: int | None = None,
    order: str | Order | Sequence = "last",
    format: str = "hf",
    quant: str = "f16",
) -> Path:
    """Member k (or the `layers`-layer member) of the family folder `path` as a Hugging Face directory or a GGUF
    file at `out`, reading only that member's tensors (see `Family.export` for the formats)."""
    from .gguf import check_exportable, write_gguf

    path, out = Path(path), Path(out)
    if format not in ("hf", "gguf"):
        raise ValueError(f"Unknown export format {format!r}; use 'hf' or 'gguf'.")
    if format == "gguf" and (path / FAMILY_FILE).is_file():
        check_exportable(json.loads((path / FAMILY_FILE).read_text())["model_type"], quant)
    member = load_member(path, layers=layers, k=k, order=order)
    tokenizer = None
    if (path / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    info = member.boomerang
    if format == "gguf":
        from ..models.loading import embedded_gguf

        reference = embedded_gguf(info["embedded_teacher"]) if info.get("embedded_teacher") else None
        name = f"boomerang member k={info['k']} ({info['order']})"
        write_gguf(member, out, quant, tokenizer, reference, info["layer_sources"], name=name)
        return out
    with atomic_dir(out) as tmp:
        member.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = {key: info[key] for key in ("k", "order", "patched")}
        (tmp / "boomerang_member.json").write_text(json.dumps({**record, "family": str(path)}, indent=2) + "\n")
    return out
