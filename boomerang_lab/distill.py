"""Distil the student from its teacher with transformers' Trainer, so `accelerate launch` / `torchrun` (DDP, FSDP) work."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from accelerate.utils import compile_regions
from datasets import Dataset, IterableDataset
from transformers import (PreTrainedModel, PreTrainedTokenizerBase, ProgressCallback, Trainer, TrainerCallback,
                          TrainingArguments, default_data_collator)

from .adapters import get_adapter, layers_of
from .atomic import atomic_dir, atomic_write_text
from .losses import IGNORE, LossConfig, distill_loss
from .models import resolve_dtype
from .plan import LayerPlan

LOG_FILE = "train_log.csv"
CONFIG_FILE = "distill_config.json"
LOG_COLUMNS = {"step": "step", "loss": "loss", "ce": "ce", "kl": "kl", "cos": "cos", "learning_rate": "lr",
               "grad_norm": "grad_norm", "num_input_tokens_seen": "tokens_seen", "epoch": "epoch"}
"""Trainer log key -> column of the per-step CSV."""


@dataclass
class DistillConfig:
    """One distillation run: the paper's recipe by default (see PROFILES for the smoke/quick/paper presets)."""

    output_dir: str = "runs/student"
    teacher: str = "smollm2-135m"
    """The teacher the CLI loads for this profile (distill() takes the model itself)."""
    student_init: str = "teacher"
    """How the CLI initialises the student: "teacher" (kept layers, the paper) or "random"; recorded with the run."""
    seq_len: int = 512
    """Block length when the CLI builds the data."""
    batch_size: int = 8
    """Sequences per device per micro-step; the global batch is batch_size x grad_accum x processes."""
    grad_accum: int = 1
    max_steps: int = 500
    lr: float = 3e-4
    scheduler: str = "cosine"
    warmup: float = 0.01
    """A fraction of max_steps (< 1) or a number of steps."""
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch_fused"
    bf16: bool = False
    """bf16 autocast for the student (fp32 master weights)."""
    teacher_dtype: str | None = None
    """None: bfloat16 on GPU, the teacher's own dtype elsewhere."""
    loss: LossConfig = field(default_factory=LossConfig)
    freeze_embeddings: bool = False
    """Freeze the student's embeddings and LM head."""
    activation_checkpointing: bool = False
    """Recompute the student's layers in backward: less memory, ~20% slower."""
    compile: bool = False
    """torch.compile the student and the teacher one decoder layer at a time (regional compilation); the loss's
    own arithmetic compiles with `loss.compile`."""
    use_cpu: bool = False
    save_steps: int = 100
    log_steps: int = 1
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        self.betas = tuple(self.betas)
        if self.student_init not in ("teacher", "random"):
            raise ValueError(f"student_init must be 'teacher' or 'random', got {self.student_init!r}.")
        if min(self.batch_size, self.grad_accum, self.max_steps, self.save_steps, self.log_steps, self.seq_len) < 1:
            raise ValueError(f"batch_size, grad_accum, max_steps, save_steps, log_steps and seq_len must be positive: {self}")


PROFILES: dict[str, DistillConfig] = {
    "smoke": DistillConfig(teacher="smollm2-tiny-random", seq_len=64, batch_size=4, max_steps=8, lr=1e-3, warmup=0.1,
                           save_steps=4),
    # CPU, SmolLM2-135M teacher: a 4 x 128-token step costs ~9-11 s of single-core CPU time (~5-6 s on 2 idle
    # cores), so 128 steps (65k tokens) take ~12-15 min on an otherwise idle 2-core machine.
    # quick and paper freeze the embeddings and head: the smoothest curve and the best student of the recipe study
    # (README, benchmarks/results/study_recipes_cpu); freeze_embeddings=False is the paper's own recipe.
    "quick": DistillConfig(teacher="smollm2-135m", seq_len=128, batch_size=4, max_steps=128, lr=3e-4, warmup=0.05,
                           save_steps=16, freeze_embeddings=True),
    # GPU: the paper's recipe; 16 x 2048 tokens per micro-step, 8 micro-steps per step (lower batch_size if it OOMs).
    "paper": DistillConfig(teacher="smollm2-135m", seq_len=2048, batch_size=16, grad_accum=8, max_steps=500,
                           bf16=True, save_steps=100, freeze_embeddings=True),
}


class DistillTrainer(Trainer):
    """A Trainer whose loss is the distillation objective against a frozen teacher; logs each loss term."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(self, *args, teacher: PreTrainedModel, plan: LayerPlan, loss_config: LossConfig,
                 teacher_dtype: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        device = self.args.device
        dtype = resolve_dtype(teacher_dtype) or (torch.bfloat16 if device.type == "cuda" else None)
        self.teacher = teacher.to(device=device, dtype=dtype).eval().requires_grad_(False)
        adapter = get_adapter(teacher)
        self.teacher_backbone = self.teacher.get_submodule(adapter.layers.rpartition(".")[0])
        if self.args.torch_compile:
            self.teacher_backbone = compile_regions(self.teacher_backbone)
        self.teacher_head = self.teacher.get_submodule(adapter.head)
        self.loss_config = loss_config
        self.alignment = plan.alignment()
        # Only the teacher states the loss reads: the aligned ones, or just the final one for KL alone.
        self.teacher_states = sorted({t for _, t in self.alignment}) if loss_config.cos_weight else [-1]
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0

    def _build_accelerator_args(self, **kwargs) -> dict:
        """Compile the student by regions (one compilation serves every decoder layer), like the teacher."""
        args = super()._build_accelerator_args(**kwargs)
        if "dynamo_plugin" in args:
            args["dynamo_plugin"].use_regional_compilation = True
        return args

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        masked = {} if mask is None else {"attention_mask": mask}
        labels = ids if mask is None else ids.masked_fill(mask == 0, IGNORE)
        teacher_hidden = None
        if self.loss_config.needs_teacher:
            with torch.no_grad():
                teacher_hidden = self.teacher_backbone(input_ids=ids, output_hidden_states=self.teacher_states,
                                                       use_cache=False, **masked).hidden_states
        out = model(input_ids=ids, output_hidden_states=bool(self.loss_config.cos_weight), use_cache=False, **masked)
        loss, terms = distill_loss(out.logits, out.hidden_states, teacher_hidden, self.teacher_head, labels, mask,
                                   self.alignment, self.loss_config)
        for name, value in terms.items():
            self._term_sums[name] = self._term_sums.get(name, 0) + value
        self._term_count += 1
        # Counted from shapes (fixed-length blocks, equal on every process): no device sync per step.
        self.state.num_input_tokens_seen += ids.numel() * self.accelerator.num_processes
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss terms (averaged over the steps since the last log and over processes) and tokens seen."""
        if self._term_count:
            names = list(self._term_sums)
            means = torch.stack([self._term_sums[n] for n in names]) / self._term_count
            logs.update(zip(names, self.accelerator.reduce(means, "mean").tolist()))
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)


class TermsProgress(ProgressCallback):
    """The Trainer's progress bar, showing the latest loss terms instead of printing a line per step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" not in logs:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        if state.is_world_process_zero and self.training_bar is not None:
            shown = {k: f"{logs[k]:.4g}" for k in ("loss", "ce", "kl", "cos") if k in logs}
            self.training_bar.set_postfix(shown)


def distill(teacher: PreTrainedModel, student: PreTrainedModel, plan: LayerPlan, data: Dataset | IterableDataset,
            config: DistillConfig, tokenizer: PreTrainedTokenizerBase | None = None,
            callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Train `student` towards the frozen `teacher` on token blocks (`data` rows: "input_ids"); return its directory.

    Checkpoints go to `<output_dir>.partial/`; rerunning the same call resumes from the last complete one. The
    student directory (model, tokenizer, plan files, train_log.csv, distill_config.json) appears only when done;
    a finished directory of the same run is returned as it is, one of another run is an error (see `finished`).
    """
    plan.check_fits(len(layers_of(teacher)), len(layers_of(student)))
    if finished(config, plan):
        return Path(config.output_dir)
    if "input_ids" not in (data.column_names or ["input_ids"]):
        raise ValueError(f"data must have an 'input_ids' column of token blocks, got columns {data.column_names}.")
    out = Path(config.output_dir)
    work = out.with_name(out.name + ".partial")
    if config.freeze_embeddings:
        adapter = get_adapter(student)
        for path in (*adapter.embeddings, adapter.head):
            student.get_submodule(path).requires_grad_(False)

    args = TrainingArguments(
        output_dir=str(work), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr, lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup, adam_beta1=config.betas[0], adam_beta2=config.betas[1],
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, optim=config.optim, bf16=config.bf16,
        torch_compile=config.compile, activation_checkpointing=config.activation_checkpointing,
        # Without an accelerator, use_cpu=False would leave each torchrun process training alone on the same files.
        use_cpu=config.use_cpu or not torch.accelerator.is_available(),
        logging_steps=config.log_steps, save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        seed=config.seed, report_to="none", remove_unused_columns=False, ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available() and not config.use_cpu,
        logging_nan_inf_filter=False)  # the filter syncs the device every step; NaN losses are logged as they are
    trainer = DistillTrainer(model=student, args=args, train_dataset=data, data_collator=default_data_collator,
                             processing_class=tokenizer, callbacks=list(callbacks), teacher=teacher, plan=plan,
                             loss_config=config.loss, teacher_dtype=config.teacher_dtype)
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") and not trainer.is_fsdp_enabled:
        warnings.warn(f"FSDP was asked for (ACCELERATE_USE_FSDP), but accelerate shards only on GPUs and other "
                      f"accelerators and runs this as {trainer.accelerator.distributed_type.value}: every process "
                      f"holds the whole student and teacher.", stacklevel=2)
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(TermsProgress)

    run = {"config": asdict(config), "plan": plan.to_dict()}
    checkpoint = _last_checkpoint(work)
    if checkpoint is not None:
        before = json.loads((work / CONFIG_FILE).read_text())
        if before != json.loads(json.dumps(run)):
            raise ValueError(f"{work} holds checkpoints of a run with other settings ({before}); rerun with those "
                             f"settings to resume it, or delete {work} to start afresh.")
    elif trainer.is_world_process_zero():
        atomic_write_text(work / CONFIG_FILE, json.dumps(run, indent=2) + "\n")
    trainer.train(resume_from_checkpoint=checkpoint)

    final = work / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        with atomic_dir(out) as tmp:
            for item in final.iterdir():
                if item.name != "training_args.bin":
                    os.replace(item, tmp / item.name)
            plan.save(tmp)
            (tmp / CONFIG_FILE).write_text(json.dumps(run, indent=2) + "\n")
            log_table(trainer.state.log_history).to_csv(tmp / LOG_FILE, index=False)
        shutil.rmtree(work)
    trainer.accelerator.wait_for_everyone()
    return out


def recipe(config: DistillConfig, plan: LayerPlan) -> dict:
    """What decides the trained student: the config and plan, less where it is written and how it is checkpointed."""
    return _recipe({"config": asdict(config), "plan": plan.to_dict()})


def _recipe(run: dict) -> dict:
    run = json.loads(json.dumps(run))
    run["config"] = {k: v for k, v in run["config"].items() if k not in ("output_dir", "use_cpu", "save_steps")}
    return run


def finished(config: DistillConfig, plan: LayerPlan) -> bool:
    """True when `config.output_dir` holds a finished run of this recipe, False when it does not exist.

    A directory distilled with another recipe raises ValueError naming the differences (never silently reused).
    """
    out = Path(config.output_dir)
    if not out.exists():
        return False
    if not (out / CONFIG_FILE).is_file():
        raise ValueError(f"{out} exists but is not a distilled student (no {CONFIG_FILE}); choose another output_dir.")
    before, now = recipe_of(out), recipe(config, plan)
    if before != now:
        diff = {k: (before["config"].get(k), v) for k, v in now["config"].items() if before["config"].get(k) != v}
        if before["plan"] != now["plan"]:
            diff["plan"] = (before["plan"], now["plan"])
        raise ValueError(f"{out} holds a student distilled with other settings (field: (there, asked)): {diff}. "
                         f"Delete it to distil again, or choose another output_dir.")
    return True


def recipe_of(path: str | Path) -> dict:
    """The recipe (see `recipe`) of a finished student directory."""
    return _recipe(json.loads((Path(path) / CONFIG_FILE).read_text()))


def run_name(path: str | Path) -> str:
    """A short, location-independent name of a finished student: its directory name and a hash of its recipe.
    A model not distilled here (a hub id, a directory without distill_config.json) keeps the name it was given."""
    if not (Path(path) / CONFIG_FILE).is_file():
        return str(path)
    digest = hashlib.sha1(json.dumps(recipe_of(path), sort_keys=True).encode()).hexdigest()[:8]
    return f"{Path(path).name}@{digest}"


def log_table(log_history: list[dict]) -> pd.DataFrame:
    """The per-step rows of a Trainer log history, with the CSV's column names."""
    rows = [{column: entry.get(key) for key, column in LOG_COLUMNS.items()} for entry in log_history if "loss" in entry]
    return pd.DataFrame(rows, columns=list(LOG_COLUMNS.values()))


def _last_checkpoint(work: Path) -> str | None:
    """The newest checkpoint whose trainer state was written (the Trainer writes it last)."""
    complete = []
    for path in work.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        complete.append((int(path.name.rpartition("-")[2]), path))
    return str(max(complete)[1]) if complete else None


def profile(name: str, **overrides) -> DistillConfig:
    """A preset (smoke, quick, paper) with fields replaced."""
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r}; choose one of {', '.join(PROFILES)}.")
    return replace(PROFILES[name], **overrides)
