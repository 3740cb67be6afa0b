"""Profiles: one object per way of running the study, with help text on every field.

A `Profile` holds the distillation recipe (`DistillConfig`), the student's layer plan (`PlanSettings`), the
evaluation settings (`EvalProfile`) and the pipeline settings (`PipelineSettings`). The built-in ones are in
`PROFILES` (smoke, quick, kit, paper, paper-llama; docs/profiles.md); `get` also reads a user profile from a YAML or
JSON file, validated by pydantic against these dataclasses (recursively, so fields added to them later need no change
here):

    name: mine            # default: the file's stem
    base: quick           # optional: start from a built-in profile and change only what is listed
    distill: {max_steps: 64, loss: {kl_weight: 0.2}}
    evaluate: {tasks: [wikitext_ppl, arc_easy_local], limit: 50}

`boomerang profiles` prints every profile's values; `boomerang profiles --show NAME` prints one as YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path, PurePath
from typing import Any, Sequence

from ..models.plan import LayerPlan
from .distill import DistillConfig, LossConfig
from .evaluate import LOCAL_TASKS, PPL_TASK, EvalProfile, PerplexityConfig
from .search import SearchConfig

PROFILE_SUFFIXES = (".yaml", ".yml", ".json")


class ProfileError(ValueError):
    """A profile name or file that cannot be used; the message names the field and the valid ones."""


@dataclass
class PlanSettings:
    """The student's layers, the paper's rule (`LayerPlan.paper`): the first layers, every n-th, the last layers."""

    __pydantic_config__ = {"extra": "forbid"}

    keep_first: int = field(
        default=1, metadata={"help": "teacher layers kept at the start (the paper: 1; its Llama student: 2)"}
    )
    keep_last: int = field(
        default=2, metadata={"help": "teacher layers kept at the end (the paper: 2; its Llama student: 1)"}
    )
    every: int = field(default=2, metadata={"help": "keep every n-th teacher layer in between (the paper: 2)"})

    def layer_plan(self, num_teacher_layers: int) -> LayerPlan:
        """This plan for a teacher with `num_teacher_layers` decoder layers."""
        return LayerPlan.paper(
            num_teacher_layers, keep_first=self.keep_first, keep_last=self.keep_last, every=self.every
        )


@dataclass
class PipelineSettings:
    """What `boomerang run` adds around distillation and evaluation."""

    __pydantic_config__ = {"extra": "forbid"}

    random_init: bool = field(
        default=False, metadata={"help": "also distil a randomly initialised student (the random-init baseline)"}
    )
    orders: tuple[str, ...] = field(
        default=("last",),
        metadata={"help": "patch orders evaluated: last, first, klpatch, optimal or any registered order"},
    )
    search: SearchConfig = field(
        default_factory=SearchConfig,
        metadata={"help": "how the KL-searched orders (klpatch, optimal) are searched: calibration and arithmetic"},
    )

    def __post_init__(self):
        self.orders = tuple(self.orders)


@dataclass
class Profile:
    """One named way of running the study: recipe, plan, evaluation and pipeline settings."""

    __pydantic_config__ = {"extra": "forbid"}

    name: str = field(default="custom", metadata={"help": "the profile's name (outputs/<name>, results/<name>.csv)"})
    description: str = field(default="", metadata={"help": "one line on what the profile is for"})
    distill: DistillConfig = field(default_factory=DistillConfig, metadata={"help": "the distillation recipe"})
    plan: PlanSettings = field(default_factory=PlanSettings, metadata={"help": "the student's layers"})
    evaluate: EvalProfile = field(default_factory=EvalProfile, metadata={"help": "what the sweep evaluates"})
    pipeline: PipelineSettings = field(default_factory=PipelineSettings, metadata={"help": "what `boomerang run` adds"})

    @property
    def teacher(self) -> str:
        return self.distill.teacher

    def layer_plan(self, num_teacher_layers: int) -> LayerPlan:
        return self.plan.layer_plan(num_teacher_layers)

    def to_dict(self) -> dict:
        """Plain values (lists for tuples): what `dump` writes and `from_dict` reads back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def dump(self, path: str | Path | None = None) -> str:
        """The profile as YAML (JSON for a .json path); written to `path` when given. `get(path)` reads it back."""
        data = self.to_dict()
        if path is not None and Path(path).suffix == ".json":
            text = json.dumps(data, indent=2) + "\n"
        else:
            import yaml

            text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


# --- the built-in profiles -----------------------------------------------------------------------------------------
PAPER_RECIPE = DistillConfig(
    teacher="smollm2-135m",
    seq_len=2048,
    batch_size=8,
    grad_accum=256,
    max_steps=500,
    lr=3e-4,
    scheduler="cosine",
    warmup=0.01,
    betas=(0.9, 0.95),
    weight_decay=0.1,
    max_grad_norm=1.0,
    bf16=True,
    freeze_embeddings=False,
    save_steps=50,
    seed=0,
    loss=LossConfig(ce_weight=1.0, kl_weight=0.1, temperature=1.0, cos_weight=2.0),
)
"""dcml-lab/boomerang-distillation `train/` on one device: 8 x 256 = 2,048 sequences of 2,048 tokens per step
(its 2 per device x 256 accumulation x 4 GPUs), every parameter trained (docs/profiles.md)."""

PAPER_EVAL = EvalProfile(
    (PPL_TASK, *LOCAL_TASKS), limit=None, ppl=PerplexityConfig(window=2048, stride=2048), batch_size=4
)
"""Every shipped task on every example, lm-eval's own `wikitext_local` word perplexity beside the fast token
perplexity; batch size 4 as the paper's evaluation script."""

PROFILES: dict[str, Profile] = {}


def register(profile: Profile, *, replace: bool = False) -> Profile:
    """Add a profile under its name (an error for a taken name unless `replace=True`)."""
    if not isinstance(profile, Profile):
        raise TypeError(f"register takes a Profile, got {type(profile).__name__}.")
    if profile.name in PROFILES and not replace:
        raise ProfileError(f"Profile {profile.name!r} already exists; pass replace=True to redefine it.")
    PROFILES[profile.name] = profile
    return profile


register(
    Profile(
        "smoke",
        "seconds on a tiny random model: every code path (the tests)",
        DistillConfig(
            teacher="smollm2-tiny-random", seq_len=64, batch_size=4, max_steps=8, lr=1e-3, warmup=0.1, save_steps=4
        ),
        PlanSettings(),
        EvalProfile(
            (PPL_TASK, "arc_easy_local"), limit=4, ppl=PerplexityConfig(window=256, stride=256, max_tokens=512)
        ),
        PipelineSettings(random_init=True, orders=("last",)),
    )
)

QUICK_EVAL = EvalProfile(
    (PPL_TASK, "lambada_openai_local"),
    limit=64,
    ppl=PerplexityConfig(window=1024, stride=1024, max_tokens=4096),
    batch_size=16,
    lm_eval_sizes=3,
    autocast="bfloat16",
)
"""The CPU evaluation of `quick` and `quick-paper`: WikiText-2 test perplexity (4,096 tokens) at every size, LAMBADA
(64 examples, batched by 16) at 3 sizes, both under bf16 autocast."""

QUICK_BUDGET = dict(
    teacher="smollm2-135m",
    seq_len=128,  # tokens per training sequence
    batch_size=4,  # sequences per step: 512 tokens
    lr=3e-4,  # the paper's peak learning rate (both stages' schedules: cosine)
    warmup=0.05,  # 5% warm-up
)
"""The distillation settings `quick` and `quick-paper` share, so that the two recipes differ only in the recipe."""

QUICK_SEARCH = SearchConfig(
    num_sequences=4,  # calibration windows of the training corpus
    seq_len=256,  # tokens per window: 1,024 calibration tokens
    seed=0,  # which windows
    stride=1,  # the KL scored at every position
    autocast=None,  # float32: it ranked above bf16 autocast by the study's rule (fewest sizes behind ShortGPT: 7 vs 6)
)
"""The quick profile's klpatch calibration (benchmarks/study_klpatch.py, validation text)."""

# The main job, on a 2-core CPU with the SmolLM2-135M teacher (benchmarks/study_quick.py chose it on WikiText-2
# validation text; README "Measured"). Two stages at 4 x 128 tokens per step, both under bf16 autocast (the CPU's
# avx512_bf16: ~1.5x faster steps than float32):
#   96 local steps  (blockwise: each 2-layer block's student layer learns its block in the teacher's context)
#   64 global steps (CE + KL + cosine through the whole student), embeddings and head frozen.
# It beat 128 global steps (the previous default) on validation text at 39 of 42 seed x size pairs in the "local"
# order and 42 of 42 in "last" (3 seeds; benchmarks/results/study_quick_cpu/seed_check.md). The family is patched in
# the KL-searched "klpatch" order, searched once after distillation (notebook 01) on QUICK_SEARCH and saved with the
# student; benchmarks/study_klpatch.py chose that calibration on validation text (2 students x 3 draws); "local" and
# "last" stay one flag away (--orders local). Evaluation: WikiText-2 test token perplexity
# (4,096 tokens) at every size under bf16 autocast, and LAMBADA (64 examples, batched) at 3 sizes, where teacher and
# student differ by many stderrs (the three 20-example tasks before could not tell any two models apart).
register(
    Profile(
        "quick",
        "the kit's recipe on a CPU: the main job (make run), about 15 min on 2 idle cores",
        DistillConfig(
            **QUICK_BUDGET,
            local_steps=96,  # the blockwise local stage (49k tokens)
            local_lr=1e-3,  # its peak learning rate (cosine, 5% warm-up)
            max_steps=64,  # the global stage (33k tokens)
            bf16=True,  # bf16 autocast on the CPU
            save_steps=48,  # a checkpoint costs ~4 s here: every 48 steps
            freeze_embeddings=True,
        ),
        PlanSettings(),
        QUICK_EVAL,
        PipelineSettings(random_init=False, orders=("klpatch",), search=QUICK_SEARCH),
    )
)

# The longer CPU run (issue 28): the quick recipe with 8x its steps (768 local + 512 global, 655k tokens), everything
# else quick's, so that its student is the 8x family student of benchmarks/study_budget.py (the same recipe: one run
# serves both). Under an hour on this machine; its results are in the README beside the main job's.
register(
    Profile(
        "quick-long",
        "the quick recipe with 8x its steps (655k tokens): the paper's result at its clearest without a GPU, <1 h",
        dataclasses.replace(PROFILES["quick"].distill, local_steps=8 * 96, max_steps=8 * 64),
        PlanSettings(),
        QUICK_EVAL,
        PipelineSettings(random_init=False, orders=("klpatch",), search=QUICK_SEARCH),
    )
)

# The paper's recipe at the quick budget, one flag away (`make run PROFILE=quick-paper`): the global objective only,
# every parameter trained, float32, 128 steps of 4 x 128 tokens (the same 65k tokens as the previous quick default),
# patched `last` as in the paper; evaluated like quick. Its curve is in the README beside the default's.
register(
    Profile(
        "quick-paper",
        "the paper's recipe (no local stage, every parameter trained, `last` order) at the quick CPU budget",
        DistillConfig(**QUICK_BUDGET, max_steps=128, save_steps=32, freeze_embeddings=False),
        PlanSettings(),
        QUICK_EVAL,
        PipelineSettings(random_init=False, orders=("last",)),
    )
)

# GPU: the kit's recipe at the paper's lengths; 16 x 2048 tokens per micro-step, 8 micro-steps per step
# (lower batch_size if it OOMs); what `paper` was before it became the paper's own recipe. Not yet run on a GPU with
# the local stage, which the CPU study chose for quick: local_steps stays 0 here.
register(
    Profile(
        "kit",
        "the kit's recipe on a GPU (frozen embeddings and head), every task, the searched orders",
        DistillConfig(
            teacher="smollm2-135m",
            seq_len=2048,
            batch_size=16,
            grad_accum=8,
            max_steps=500,
            bf16=True,
            save_steps=100,
            freeze_embeddings=True,
        ),
        PlanSettings(),
        dataclasses.replace(PAPER_EVAL, batch_size=1),
        PipelineSettings(random_init=True, orders=("last", "first", "klpatch", "optimal")),
    )
)

register(
    Profile(
        "paper",
        "the paper's recipe (dcml-lab/boomerang-distillation train/) on one GPU, its evaluation",
        copy.deepcopy(PAPER_RECIPE),
        PlanSettings(keep_first=1, keep_last=2, every=2),
        PAPER_EVAL,
        PipelineSettings(random_init=True, orders=("last", "first")),
    )
)

register(
    Profile(
        "paper-llama",
        "the paper's recipe with its Llama settings: first 2 layers kept, patched first-k",
        copy.deepcopy(PAPER_RECIPE),
        PlanSettings(keep_first=2, keep_last=1, every=2),
        PAPER_EVAL,
        PipelineSettings(random_init=True, orders=("first",)),
    )
)


# --- lookup and files ----------------------------------------------------------------------------------------------
def is_profile_file(name: str | Path) -> bool:
    return Path(name).suffix.lower() in PROFILE_SUFFIXES


def get(name: str | Path | Profile, **overrides) -> Profile:
    """A copy of the built-in profile `name`, or the profile in a YAML/JSON file; `overrides` are Profile fields
    (nested ones as dicts, e.g. distill={"max_steps": 4}), validated like a file's."""
    if isinstance(name, Profile):
        profile = copy.deepcopy(name)
    elif is_profile_file(name):
        profile = load(name)
    elif name in PROFILES:
        profile = copy.deepcopy(PROFILES[name])
    else:
        raise ProfileError(
            f"Unknown profile {str(name)!r}; use one of {', '.join(PROFILES)}, or a .yaml/.json "
            f"file (`boomerang profiles --show quick` prints one to start from)."
        )
    return _validate(_merged(profile, overrides), f"profile {profile.name}") if overrides else profile


def load(path: str | Path) -> Profile:
    """The profile in a YAML or JSON file (see the module docstring); errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Profile file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ProfileError(f"{path}: not valid JSON: {err}") from err
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ProfileError(f"{path}: not valid YAML: {err}") from err
    return from_dict({} if data is None else data, source=str(path), default_name=path.stem)


def from_dict(data: dict, source: str = "profile", default_name: str = "custom") -> Profile:
    """A Profile from plain values; `base` names a built-in profile to start from (else the dataclass defaults)."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a mapping of fields ({_names(Profile)}), got {data!r}.")
    data = dict(data)
    base_name = data.pop("base", None)
    if base_name is not None:
        if base_name not in PROFILES:
            raise ProfileError(
                f"{source}: base {base_name!r} is not a built-in profile; use one of {', '.join(PROFILES)}."
            )
        base = dataclasses.replace(
            PROFILES[base_name], name=default_name, description=f"{base_name} with changes ({source})"
        )
    else:
        base = Profile(name=default_name)
    return _validate(_merged(base, data), source)


# --- validation (pydantic) ----------------------------------------------------------------------------------------
def distill_config(profile: str | Path | Profile, **overrides) -> DistillConfig:
    """The recipe of a profile (a built-in name, a YAML/JSON file or a Profile) with DistillConfig fields replaced,
    validated like a file's (`distill_config("quick", max_steps=4)`)."""
    return get(profile, distill=overrides).distill


def _names(cls) -> str:
    return ", ".join(f.name for f in fields(cls) if f.init)


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _adapter():
    from pydantic import TypeAdapter

    return TypeAdapter(Profile)


def _merged(base: Any, changes: dict) -> dict:
    """`base` (a dataclass or a mapping) as plain values, with `changes` (nested mappings) laid over it."""
    out = dataclasses.asdict(base) if is_dataclass(base) else dict(base)
    for key, value in changes.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else value
    return out


def _validate(data: dict, where: str) -> Profile:
    """A Profile from plain values, validated by pydantic over the dataclasses in strict JSON mode: every value must
    already have its field's type (an int passes as a float, a list as a tuple; nothing else converts), and the
    dataclasses' own checks (`__post_init__`) run. An error is one line: the field, the value, what is valid."""
    from pydantic import ValidationError

    def plain(value):  # what JSON has no word for: a settings object given from Python, or a path
        if is_dataclass(value) or isinstance(value, PurePath):
            return dataclasses.asdict(value) if is_dataclass(value) else str(value)
        raise ProfileError(f"{where}: {value!r} ({type(value).__name__}) is not a number, text, list or mapping.")

    text = json.dumps(data, default=plain)
    try:
        return _adapter().validate_json(text, strict=True)
    except ValidationError as err:
        raise ProfileError("; ".join(dict.fromkeys(_message(e, data, where) for e in err.errors()))) from err


def _message(error: dict, data: dict, where: str) -> str:
    path, hint = [], Profile
    for part in error["loc"]:  # field names down to the field at fault (the rest: item indices, union members)
        if not (is_dataclass(hint) and part in _hints(hint)):
            break
        path.append(part)
        hint = _hints(hint)[part]
    at = ".".join([where, *path])
    if error["type"] == "unexpected_keyword_argument":
        return f"{at}: unknown field {error['loc'][len(path)]!r}; the fields of {hint.__name__} are: {_names(hint)}."
    if error["type"] == "value_error":  # a dataclass's own check
        return f"{at}: {error['msg'].removeprefix('Value error, ')}"
    value = functools.reduce(lambda node, key: node.get(key) if isinstance(node, dict) else None, path, data)
    if is_dataclass(hint):
        return f"{at} must be a mapping of {hint.__name__} fields ({_names(hint)}), got {value!r}."
    return f"{at} must be {type_name(hint)}, got {value!r} ({type(value).__name__})."


def type_name(hint: Any) -> str:
    """A field's type as written in its class (int, tuple[float, float], int | float | null)."""
    return re.sub(r"\bNone(Type)?\b", "null", re.sub(r"<class '(\w+)'>", r"\1", str(hint)))


# --- help and the table --------------------------------------------------------------------------------------------
def field_rows(cls=Profile, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted path, the field's dataclass or type hint, help) of every leaf field under `cls`, depth first."""
    rows = []
    hints = _hints(cls)
    for f in fields(cls):
        if not f.init:
            continue
        path = f"{prefix}{f.name}"
        tp = hints[f.name]
        if is_dataclass(tp):
            rows += field_rows(tp, f"{path}.")
        else:
            rows.append((path, tp, " ".join(str(f.metadata.get("help", "")).split())))
    return rows


def flatten(profile: Profile) -> dict[str, Any]:
    """Dotted path -> value of every leaf field."""
    out = {}

    def walk(value, prefix):
        if is_dataclass(value) and not isinstance(value, type):
            for f in fields(value):
                if f.init:
                    walk(getattr(value, f.name), f"{prefix}{f.name}.")
        else:
            out[prefix[:-1]] = value

    walk(profile, "")
    return out


def table(names: Sequence[str | Path] | None = None, help: bool = True) -> str:
    """A markdown table: one row per field (dotted path; name and description left out), one column per profile (all
    built-in ones by default), plus each field's help (`boomerang profiles`)."""
    chosen = [get(n) for n in (names or list(PROFILES))]
    helps = {path: text for path, _, text in field_rows()}
    values = [flatten(p) for p in chosen]
    header = ["field", *(p.name for p in chosen), *(["help"] if help else [])]
    rows = [
        [path, *(_show(v[path]) for v in values), *([helps.get(path, "")] if help else [])]
        for path in values[0]
        if path not in ("name", "description")
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "-"
    return "null" if value is None else str(value)


def fields_help() -> str:
    """Every field of a profile and its help, as a two-column list (`boomerang --help` shows it)."""
    rows = field_rows()
    width = max(len(path) for path, _, _ in rows)
    return "\n".join(f"  {path:<{width}}  {h}" for path, _, h in rows)


def main_order(profile: str, orders: Sequence[str] | None = None) -> str:
    """The order a run's notebooks show: the first of `orders` (what the run evaluates), else of the profile's
    pipeline orders (`profile.pipeline.orders[0]`, the main job's default)."""
    chosen = list(orders or get(profile).pipeline.orders)
    if not chosen:
        raise ValueError(f"Profile {profile!r} evaluates no order; give orders, e.g. ['last'].")
    return chosen[0]
