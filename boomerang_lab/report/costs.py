"""What a family saves (the paper's Table 3): training FLOPs of one student and its zero-shot family against
distilling every intermediate size directly with the same budget.

The formula, per training token, counts multiply-adds as 2 FLOPs (Kaplan et al. 2020, with the backward pass split
into its two halves so that frozen parameters are counted right):

    N(part)    weights of the matrix multiplies a token passes through: every 2-D parameter of a decoder layer, and
               the LM head (vocab x width, even when tied to the embeddings); the embedding lookup, norms and biases
               cost no multiply-adds here.
    A(layer)   attention scores and mixing per token, forward: 2 x 2 x d_attn x (seq_len + 1) / 2 (QK^T and AV over
               the (seq_len + 1) / 2 positions a token sees on average under the causal mask).

    global stage (CE + KL + cosine through the whole student, run by `distill.DistillTrainer`)
        teacher forward                 2 N(teacher layers + head) + A(teacher)  (the head gives KL its logits)
        student forward                 2 N(student layers + head) + A(student)
        student backward, activations   2 N(student layers + head) + 2 A(student)  (gradients reach every layer)
        student backward, weights       2 N(trained student weights)  (frozen embeddings and head: none for them)
    local stage (`distill/local.py`: each multi-layer student layer alone, in the teacher's context)
        teacher backbone forward        2 N(teacher layers) + A(teacher)  (no head)
        trained student layers          6 N(those layers) + 3 A(those layers)  (forward, both backward halves)

A run costs tokens(local) x local + tokens(global) x global. A zero-shot member costs no training FLOPs; distilling
size k directly costs one run of the same recipe on that member's layers (`direct.direct_plan`). The attention term
is small at the quick recipe's 128 tokens and a few per cent at the paper's 2,048.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from ..config.profiles import get
from ..models.adapters import get_adapter, layers_of
from ..models.plan import LayerPlan

PAPER_TABLE3 = {"Qwen3-4B-Base": 19.17, "Pythia-2.8B": 17.01, "Llama-3.2-3B": 14.53}
"""The paper's Table 3: how many times fewer training FLOPs the family needs than distilling each size."""
PAPER_SETTINGS = {
    "Qwen3-4B-Base": ("paper", "last"),
    "Pythia-2.8B": ("paper", "last"),
    "Llama-3.2-3B": ("paper-llama", "first"),
}
"""The profile (plan and recipe) and patch order the paper used with each teacher."""


SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
)
"""SmolLM2-135M(-Instruct)'s shapes (the embedded teacher's config), for models of its size without its weights."""


def paper_teacher_configs() -> dict[str, PretrainedConfig]:
    """The paper's teachers and SmolLM2-135M, built from their published hyperparameters (no hub access)."""
    from transformers import GPTNeoXConfig, LlamaConfig, Qwen3Config

    return {
        "Qwen3-4B-Base": Qwen3Config(
            vocab_size=151936,
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=True,
        ),
        "Pythia-2.8B": GPTNeoXConfig(
            vocab_size=50304,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=32,
            num_attention_heads=32,
            rotary_pct=0.25,
            tie_word_embeddings=False,
        ),
        "Llama-3.2-3B": LlamaConfig(
            vocab_size=128256,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=True,
        ),
        "SmolLM2-135M": LlamaConfig(**SMOLLM2_135M),
    }


def teacher_config(name: str) -> PretrainedConfig:
    """A teacher's config without loading weights: SmolLM2-135M from `paper_teacher_configs`, an embedded model's or
    any local path's or hub id's (AutoConfig)."""
    from transformers import AutoConfig

    from ..models.loading import EMBEDDED, TINY, embedded_path

    if name == "smollm2-135m":
        return paper_teacher_configs()["SmolLM2-135M"]
    return AutoConfig.from_pretrained(embedded_path(name) if name in EMBEDDED or name == TINY else name)


@dataclass(frozen=True)
class Shape:
    """The parameter counts the formula needs, read from a model built on the meta device (no memory, no weights)."""

    layer_matmul: tuple[int, ...]  # N of each decoder layer (its 2-D parameters)
    head: int  # N of the LM head (vocab x width)
    embeddings: int  # embedding parameters (trained unless frozen; no multiply-adds)
    d_attn: int  # query heads x head dim

    @classmethod
    def of(cls, config: PretrainedConfig) -> "Shape":
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        adapter = get_adapter(model)
        layers = tuple(sum(p.numel() for p in layer.parameters() if p.ndim == 2) for layer in layers_of(model))
        head = model.get_submodule(adapter.head).weight.numel()
        embeddings = sum(p.numel() for path in adapter.embeddings for p in model.get_submodule(path).parameters())
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(layers, head, embeddings, heads * head_dim)


def run_flops(shape: Shape, plan: LayerPlan, recipe) -> dict[str, float]:
    """Training FLOPs of one distillation run of `recipe` (a DistillConfig) for the student `plan` keeps (see the
    module docstring): per stage and in all, with the tokens each stage reads."""
    attn = 2 * 2 * shape.d_attn * (recipe.seq_len + 1) / 2  # per token, per layer, forward
    teacher_layers = sum(shape.layer_matmul)
    student_layers = sum(shape.layer_matmul[i] for i in plan.kept)
    n_t, n_s = plan.num_teacher_layers, plan.num_student_layers
    per_step = recipe.batch_size * recipe.grad_accum * recipe.seq_len
    tokens_local, tokens_global = recipe.local_steps * per_step, recipe.max_steps * per_step

    trained = student_layers + (0 if recipe.freeze_embeddings else shape.head)
    teacher_global = 2 * (teacher_layers + shape.head) + n_t * attn
    student_global = 2 * (student_layers + shape.head) + n_s * attn  # forward
    student_global += 2 * (student_layers + shape.head) + 2 * n_s * attn + 2 * trained  # backward
    local_layers = plan.multi_layer
    teacher_local = 2 * teacher_layers + n_t * attn
    student_local = sum(6 * shape.layer_matmul[plan.kept[j]] + 3 * attn for j in local_layers)
    local = tokens_local * (teacher_local + student_local)
    glob = tokens_global * (teacher_global + student_global)
    return {
        "tokens": tokens_local + tokens_global,
        "local_flops": local,
        "global_flops": glob,
        "flops": local + glob,
        "teacher_share": (tokens_local * teacher_local + tokens_global * teacher_global) / (local + glob),
    }


def family_costs(config: PretrainedConfig, profile="paper", order: str = "last") -> pd.DataFrame:
    """One row per model a user could want, the family's student (k=0) and every intermediate size k=1..K-1, with
    the training FLOPs of distilling it with `profile`'s recipe (a name, a file or a Profile) on `config`'s teacher.
    The family gets every intermediate size from the k=0 run alone."""
    from ..evaluate.direct import direct_plan, resolve_order

    chosen = get(profile)
    shape = Shape.of(config)
    plan = chosen.layer_plan(config.num_hidden_layers)
    resolved = resolve_order(plan, order)
    rows = []
    for k in range(resolved.num_sizes):
        own = plan if k == 0 else direct_plan(plan, resolved, k)
        params = sum(shape.layer_matmul[i] for i in own.kept)
        rows.append(
            {
                "k": k,
                "layers": own.num_student_layers,
                "local_layers": len(own.multi_layer) if chosen.distill.local_steps else 0,
                "layer_params": params,
                **run_flops(shape, own, chosen.distill),
            }
        )
    return pd.DataFrame(rows)


def table3(configs: dict[str, PretrainedConfig], profile="paper", order: str = "last") -> pd.DataFrame:
    """The paper's Table 3 for each teacher: FLOPs of the family (one student) and of distilling each intermediate
    size directly, their ratio, and the paper's ratio where it has one."""
    rows = []
    for name, config in configs.items():
        costs = family_costs(config, profile, order)
        family, direct = costs.flops.iloc[0], costs.flops.iloc[1:].sum()
        rows.append(
            {
                "teacher": name,
                "profile": getattr(profile, "name", profile),
                "teacher_layers": config.num_hidden_layers,
                "student_layers": int(costs.layers.iloc[0]),
                "intermediate_sizes": len(costs) - 1,
                "family_flops": family,
                "direct_flops": direct,
                "ratio": direct / family,
                "paper_ratio": PAPER_TABLE3.get(name, np.nan),
            }
        )
    return pd.DataFrame(rows)


def paper_table3() -> pd.DataFrame:
    """`table3` for the paper's three teachers, each with the paper's plan, recipe and order (`PAPER_SETTINGS`)."""
    configs = paper_teacher_configs()
    return pd.concat(
        [table3({name: configs[name]}, profile, order) for name, (profile, order) in PAPER_SETTINGS.items()],
        ignore_index=True,
    )


def extrapolate_seconds(measured: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """Wall seconds of every run in `costs` (from `family_costs`) from the `measured` ones (columns layers, seconds):
    seconds proportional to the student's layers, c x layers, with c fitted to the measured runs by least squares.
    Layers, not FLOPs: on a CPU the measured time does not follow the FLOPs model (the local stage's steps are cheaper
    there than its FLOPs say); one parameter, because times measured on a shared machine are too noisy for a slope.
    Returns `costs` with `seconds` (measured where a size was measured, its mean over seeds, else c x layers),
    `measured` (bool) and `seconds_per_layer` (c)."""
    x = measured.layers.to_numpy(dtype=float)
    y = measured.seconds.to_numpy(dtype=float)
    per_layer = float((x * y).sum() / (x * x).sum())
    mean = measured.groupby("layers").seconds.mean()
    out = costs.copy()
    out["measured"] = out.layers.isin(mean.index)
    out["seconds"] = np.where(out.measured, out.layers.map(mean), per_layer * out.layers)
    out["seconds_per_layer"] = per_layer
    return out


def measured_seconds(study: pd.DataFrame) -> pd.DataFrame:
    """(layers, seconds) of every direct student in a Figure 4 study table (`distilled` rows, each seed once)."""
    direct = study[study.method == "distilled"].drop_duplicates(["layers", "seed"])
    return direct[["layers", "distill_seconds"]].rename(columns={"distill_seconds": "seconds"}).dropna()


STAGE_SIZE = {"local": "local_layers", "global": "layers"}
"""What a stage's step time grows with: the local stage trains the multi-layer blocks' student layers (beside a fixed
teacher forward), the global stage runs the whole student (beside the same teacher forward)."""


def step_seconds(steps: pd.DataFrame, costs: pd.DataFrame, recipe) -> pd.DataFrame:
    """Seconds of every run in `costs` (from `family_costs`) from timed optimizer steps (benchmarks/table3_steps.py:
    columns k, stage, cpu_seconds): per size and stage the median seconds per step, times the recipe's steps of
    that stage (`local_steps` where the student has a multi-layer block, `max_steps`). A size or stage that was not
    timed gets a per-stage straight line through the timed ones (seconds per step against the stage's layers,
    `STAGE_SIZE`), labelled so in `seconds_source`. Returns `costs` with seconds_per_local_step,
    seconds_per_global_step, seconds, measured (bool: both of its stages timed) and seconds_source."""
    out = costs.copy()
    per_step = steps.groupby(["k", "stage"]).cpu_seconds.median()
    timed = set(steps.k.unique())
    for stage, size in STAGE_SIZE.items():
        column = f"seconds_per_{stage}_step"
        known = {k: per_step[(k, stage)] for k in timed if (k, stage) in per_step.index}
        x = np.array([out.loc[out.k == k, size].item() for k in known], dtype=float)
        y = np.array(list(known.values()), dtype=float)
        if len(known) >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
        elif len(known):
            slope, intercept = 0.0, float(y.mean())
        else:
            slope = intercept = np.nan
        line = intercept + slope * out[size].astype(float)
        out[column] = [known.get(k, fit) for k, fit in zip(out.k, line)]
    uses_local = (out.local_layers > 0) & (recipe.local_steps > 0)
    out.loc[~uses_local, "seconds_per_local_step"] = 0.0
    out["seconds"] = (
        np.where(uses_local, recipe.local_steps * out.seconds_per_local_step, 0.0)
        + recipe.max_steps * out.seconds_per_global_step
    )
    stages_timed = [
        all((k, stage) in per_step.index for stage in (["local"] if used else []) + ["global"])
        for k, used in zip(out.k, uses_local)
    ]
    # The rate each stage runs at (FLOPs per step / seconds per step): about constant across sizes when the FLOPs
    # formula and the timings tell one story.
    with np.errstate(divide="ignore", invalid="ignore"):
        local_per_step = out.local_flops / max(recipe.local_steps, 1)
        out["local_gflop_per_s"] = np.where(uses_local, local_per_step / out.seconds_per_local_step / 1e9, np.nan)
        out["global_gflop_per_s"] = out.global_flops / max(recipe.max_steps, 1) / out.seconds_per_global_step / 1e9
    out["measured"] = stages_timed
    out["seconds_source"] = np.where(
        out.measured, "measured (timed steps x the recipe's steps)", "fitted (per-stage line through timed sizes)"
    )
    return out


def table3_measured(
    name: str,
    config: PretrainedConfig,
    profile="quick",
    study: pd.DataFrame | None = None,
    order: str = "last",
    steps: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`table3`'s row for one teacher and its per-size rows (`family_costs`), with seconds and their ratio beside
    the FLOPs and theirs. With `steps` (benchmarks/table3_steps.py's timed steps), each size's seconds are its timed
    seconds per step of each stage times the recipe's steps (`step_seconds`); otherwise, from `study` (a Figure 4
    table): measured sizes as measured, the others and the family's student extrapolated (`extrapolate_seconds`)."""
    from ..config.profiles import get

    row = table3({name: config}, profile, order)
    sizes = family_costs(config, profile, order)
    if steps is not None and len(steps):
        sizes = step_seconds(steps, sizes, get(profile).distill)
        row["family_seconds"] = sizes.seconds.iloc[0]
        row["direct_seconds"] = sizes.seconds.iloc[1:].sum()
        row["seconds_ratio"] = row.direct_seconds / row.family_seconds
        row["measured_layers"] = ", ".join(str(int(n)) for n in sizes.layers[sizes.measured])
        row["seconds_from"] = (
            f"timed steps ({int(sizes.measured.sum())} of {len(sizes)} sizes, the rest fitted per stage), "
            f"CPU seconds of one thread"
        )
        return row, sizes
    measured = measured_seconds(study) if study is not None else pd.DataFrame()
    if len(measured):
        sizes = extrapolate_seconds(measured, sizes)
        row["family_seconds"] = sizes.seconds.iloc[0]
        row["direct_seconds"] = sizes.seconds.iloc[1:].sum()
        row["seconds_ratio"] = row.direct_seconds / row.family_seconds
        row["measured_layers"] = ", ".join(str(int(n)) for n in sorted(measured.layers.unique()))
    return row, sizes
