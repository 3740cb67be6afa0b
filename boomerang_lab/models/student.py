"""Initialise a student from a teacher by keeping the plan's layers (or the same shape, randomly initialised)."""

from __future__ import annotations

import copy
import re

import torch
from transformers import PreTrainedModel

from .adapters import get_adapter, layers_of, set_num_layers
from .plan import LayerPlan


def student_config(teacher: PreTrainedModel, plan: LayerPlan):
    """The teacher's config with only the kept layers."""
    plan.check_fits(len(layers_of(teacher)))
    config = copy.deepcopy(teacher.config)
    layer_types = getattr(config, "layer_types", None)
    set_num_layers(config, [layer_types[i] for i in plan.kept] if layer_types else None, len(plan.kept))
    return config


def init_student(
    teacher: PreTrainedModel, plan: LayerPlan, random_init: bool = False, seed: int = 0
) -> PreTrainedModel:
    """The teacher with only the kept layers, copied (the student trains independently), or random weights."""
    adapter = get_adapter(teacher)
    config = student_config(teacher, plan)
    reference = next(teacher.parameters())
    if random_init:
        torch.manual_seed(seed)
        return type(teacher)(config).to(dtype=reference.dtype, device=reference.device).eval()
    with torch.device("meta"):
        student = type(teacher)(config)
    position = {t: s for s, t in enumerate(plan.kept)}
    pattern = re.compile(rf"^{re.escape(adapter.layers)}\.(\d+)\.")
    state = {}
    for key, value in teacher.state_dict().items():
        match = pattern.match(key)
        if match is None:
            state[key] = value.clone()
        elif int(match.group(1)) in position:
            state[pattern.sub(f"{adapter.layers}.{position[int(match.group(1))]}.", key)] = value.clone()
    student.load_state_dict(state, assign=True)
    student.tie_weights()
    for name, buffer in list(student.named_buffers()):  # non-persistent buffers (rotary inv_freq, ...) are not saved
        if buffer.is_meta:
            match = pattern.match(name)
            source = pattern.sub(f"{adapter.layers}.{plan.kept[int(match.group(1))]}.", name) if match else name
            parent, _, leaf = name.rpartition(".")
            student.get_submodule(parent)._buffers[leaf] = teacher.get_buffer(source).clone()
    return student.eval()
