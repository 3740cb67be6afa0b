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


def init_student(teacher: PreTrainedModel, plan: LayerPlan, random_init: bool = False,
                 seed: int = 0) -> PreTrainedModel:
    """The teacher with only the kept layers, copied (the student trains independently), or random weights."""
    adapter = get_adapter(teacher)
    config = student_config(teacher, plan)
    dtype = next(teacher.parameters()).dtype
    torch.manual_seed(seed)
    student = type(teacher)(config).to(dtype=dtype, device=next(teacher.parameters()).device)
    if not random_init:
        position = {t: s for s, t in enumerate(plan.kept)}
        pattern = re.compile(rf"^{re.escape(adapter.layers)}\.(\d+)\.")
        state = {}
        for key, value in teacher.state_dict().items():
            match = pattern.match(key)
            if match is None:
                state[key] = value
            elif int(match.group(1)) in position:
                state[pattern.sub(f"{adapter.layers}.{position[int(match.group(1))]}.", key)] = value
        student.load_state_dict(state)
    return student.eval()
