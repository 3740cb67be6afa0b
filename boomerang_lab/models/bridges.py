"""A student of another class seen as its teacher's class: the student's own modules, re-parented into the teacher's
layout (zero copy), so that a family over the pair is built from models of one class.

DistilBERT was made from BERT by dropping token-type embeddings and renaming modules; its blocks compute exactly what
BERT's do. Its BERT view runs the student's weights through BERT's code (BERT's calling convention, attention-mask
handling and MLM head), gives the student's outputs (in eval mode), and a member mixing it with BERT layers is a real
BertForMaskedLM that saves and loads as one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass(frozen=True)
class Bridge:
    """How a student class maps onto a teacher class. `{i}` in a path stands for each student layer."""

    paths: dict[str, str]  # teacher-layout path <- student path (module, parameter or buffer)
    zeros: tuple[str, ...]  # teacher-layout tensors the student has no counterpart for: fixed zeros
    config: dict[str, str]  # teacher config field <- student config field; these must agree


_L, _D = "bert.encoder.layer.{i}.", "distilbert.transformer.layer.{i}."

BRIDGES: dict[tuple[str, str], Bridge] = {
    ("bert", "distilbert"): Bridge(
        paths={
            "bert.embeddings.word_embeddings": "distilbert.embeddings.word_embeddings",
            "bert.embeddings.position_embeddings": "distilbert.embeddings.position_embeddings",
            "bert.embeddings.LayerNorm": "distilbert.embeddings.LayerNorm",
            "bert.embeddings.position_ids": "distilbert.embeddings.position_ids",
            _L + "attention.self.query": _D + "attention.q_lin",
            _L + "attention.self.key": _D + "attention.k_lin",
            _L + "attention.self.value": _D + "attention.v_lin",
            _L + "attention.output.dense": _D + "attention.out_lin",
            _L + "attention.output.LayerNorm": _D + "sa_layer_norm",
            _L + "intermediate.dense": _D + "ffn.lin1",
            _L + "output.dense": _D + "ffn.lin2",
            _L + "output.LayerNorm": _D + "output_layer_norm",
            "cls.predictions.transform.dense": "vocab_transform",
            "cls.predictions.transform.LayerNorm": "vocab_layer_norm",
            "cls.predictions.decoder": "vocab_projector",
            "cls.predictions.bias": "vocab_projector.bias",
        },
        zeros=("bert.embeddings.token_type_embeddings.weight", "bert.embeddings.token_type_ids"),
        config={
            "hidden_size": "dim",
            "num_attention_heads": "n_heads",
            "intermediate_size": "hidden_dim",
            "hidden_act": "activation",
            "vocab_size": "vocab_size",
            "max_position_embeddings": "max_position_embeddings",
        },
    ),
}
"""(teacher model_type, student model_type) -> Bridge."""


def as_teacher_class(teacher: PreTrainedModel, student: PreTrainedModel) -> PreTrainedModel:
    """`student` itself if it is of the teacher's class (or no bridge is known), else its view in that class."""
    bridge = BRIDGES.get((teacher.config.model_type, student.config.model_type))
    if type(student) is type(teacher) or bridge is None:
        return student
    for field, student_field in bridge.config.items():
        ours, theirs = getattr(teacher.config, field), getattr(student.config, student_field)
        if ours != theirs:
            raise ValueError(
                f"Interpolation needs matching widths and layer shapes: teacher {field}={ours}, "
                f"student {student_field}={theirs}."
            )
    num_layers = student.config.num_hidden_layers
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_layers
    config.tie_word_embeddings = student.config.tie_word_embeddings
    with torch.device("meta"):
        view = type(teacher)(config)
    for target, source in bridge.paths.items():
        for i in range(num_layers) if "{i}" in target else [None]:
            _set(view, target.format(i=i), _get(student, source.format(i=i)))
    reference = next(student.parameters())
    for path in bridge.zeros:
        like = _get(view, path)
        zero = torch.zeros(
            like.shape, dtype=reference.dtype if like.is_floating_point() else like.dtype, device=reference.device
        )
        _set(view, path, nn.Parameter(zero, requires_grad=False) if isinstance(like, nn.Parameter) else zero)
    left = [name for name, t in [*view.named_parameters(), *view.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(
            f"The {student.config.model_type} -> {teacher.config.model_type} bridge leaves {left} "
            f"unset; this transformers version lays the models out differently."
        )
    return view.train(student.training)


def _get(model: nn.Module, path: str):
    parent, _, name = path.rpartition(".")
    try:
        return getattr(model.get_submodule(parent), name)
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no {path!r}: bridging needs the masked-LM model "
            f"(e.g. DistilBertForMaskedLM), not the bare backbone."
        ) from None


def _set(model: nn.Module, path: str, value) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, value)
