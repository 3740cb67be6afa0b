"""Distil the student from its teacher with transformers' Trainer, so `accelerate launch` / `torchrun` (DDP, FSDP)
work."""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from accelerate.utils import compile_regions
from datasets import Dataset, IterableDataset
from safetensors.torch import load_file
from tqdm.std import tqdm as plain_tqdm
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)
from transformers.trainer_utils import load_sharded_checkpoint
from transformers.utils.notebook import NotebookProgressCallback

from ..config.distill import DistillConfig, FamilyAwareConfig, LossConfig
from ..models.adapters import get_adapter, layers_of
from ..models.loading import autocast_for, resolve_dtype
from ..models.orders import Order
from ..models.plan import LayerPlan
from ..store import manifest
from ..store.atomic import atomic_dir, atomic_write_text, disk_full_stops, is_disk_full, usual_permissions
from ..store.locks import folder_lock
from .family_aware import draw_members, member_alignment
from .local import local_loss, only_train, restore_grad, teacher_block_states
from .losses import IGNORE, distill_loss

LOG_FILE = "train_log.csv"
CONFIG_FILE = "distill_config.json"
LOG_COLUMNS = {
    "step": "step",
    "loss": "loss",
    "ce": "ce",
    "kl": "kl",
    "cos": "cos",
    "local_nmse": "local_nmse",
    "local_cos": "local_cos",
    "member_loss": "member_loss",
    "members": "members",
    "learning_rate": "lr",
    "grad_norm": "grad_norm",
    "num_input_tokens_seen": "tokens_seen",
    "epoch": "epoch",
}
"""Trainer log key -> column of the per-step CSV."""


def teacher_on(
    teacher: PreTrainedModel, device: torch.device | str, dtype: torch.dtype | None, placed: dict | None = None
) -> PreTrainedModel:
    """The teacher on `device` in `dtype` (None: its own), frozen, without changing the caller's model: the model
    itself when every tensor (parameters and buffers) is already there, else a copy moved and cast (once per
    `placed`, a cache shared by the stages of one run). The caller's training flags and requires_grad are set back
    by `frozen_teacher` when the run ends."""
    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as tensors report it
    key = (str(device), dtype)
    if placed is not None and key in placed:
        return placed[key]
    tensors = [*teacher.parameters(), *teacher.buffers()]
    there = all(t.device == device for t in tensors) and (
        dtype is None or all(t.dtype == dtype for t in tensors if t.is_floating_point())
    )
    model = teacher if there else copy.deepcopy(teacher).to(device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    if placed is not None:
        placed[key] = model
    return model


@contextlib.contextmanager
def frozen_teacher(teacher: PreTrainedModel):
    """Hold the caller's teacher in eval mode without gradients for a run, and give each module its training flag and
    each parameter its requires_grad back afterwards (also when the run fails)."""
    modes = {module: module.training for module in teacher.modules()}
    flags = {param: param.requires_grad for param in teacher.parameters()}
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
        for param, flag in flags.items():
            param.requires_grad_(flag)


class _TeacherTrainer(Trainer):
    """A Trainer holding a frozen teacher, logging the loss terms its objective reports."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean

    def __init__(
        self,
        *args,
        teacher: PreTrainedModel,
        plan: LayerPlan,
        teacher_dtype: str | None = None,
        placed: dict | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        device = self.args.device
        dtype = resolve_dtype(teacher_dtype) or (torch.bfloat16 if device.type == "cuda" else None)
        self.teacher = teacher_on(teacher, device, dtype, {} if placed is None else placed)
        self.plan = plan
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_count = 0

    def _build_accelerator_args(self, **kwargs) -> dict:
        """Compile the student by regions (one compilation serves every decoder layer), like the teacher."""
        args = super()._build_accelerator_args(**kwargs)
        if "dynamo_plugin" in args:
            args["dynamo_plugin"].use_regional_compilation = True
        return args

    def _record(self, terms: dict[str, torch.Tensor], ids: torch.Tensor) -> None:
        for name, value in terms.items():
            self._term_sums[name] = self._term_sums.get(name, 0) + value
        self._term_count += 1
        # Counted from shapes (fixed-length blocks, equal on every process): no device sync per step.
        self.state.num_input_tokens_seen += ids.numel() * self.accelerator.num_processes

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the loss terms (averaged over the steps since the last log and over processes) and tokens seen."""
        if self._term_count:
            names = list(self._term_sums)
            means = torch.stack([self._term_sums[n] for n in names]) / self._term_count
            logs.update(zip(names, self.accelerator.reduce(means, "mean").tolist()))
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)


class DistillTrainer(_TeacherTrainer):
    """The global objective: CE + KL to the teacher's logits + cosine alignment, through the whole student."""

    def __init__(
        self,
        *args,
        loss_config: LossConfig,
        family_aware: FamilyAwareConfig | None = None,
        seed: int = 0,
        members: Callable | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        adapter = get_adapter(self.teacher)
        self.teacher_backbone = self.teacher.get_submodule(adapter.layers.rpartition(".")[0])
        if self.args.torch_compile:
            self.teacher_backbone = compile_regions(self.teacher_backbone)
        self.teacher_head = self.teacher.get_submodule(adapter.head)
        self.loss_config = loss_config
        self.alignment = self.plan.alignment()
        # Only the teacher states the loss reads: the aligned ones, or just the final one for KL alone.
        self.teacher_states = sorted({t for _, t in self.alignment}) if loss_config.cos_weight else [-1]
        # The family-aware stage (family_aware.py): members of the family of the student being trained, zero-copy
        # views sharing its modules and the frozen teacher's; the student's tensors stay its own (share=False).
        self.family_aware = family_aware if family_aware is not None and family_aware.on else None
        self.draw_seed = seed
        self.family = None
        self.drawn: list[tuple[int, list]] = []  # (step, draws) of the steps since the last log
        if self.family_aware is not None:
            if members is None:
                raise ValueError(
                    "family_aware.members_per_step > 0 needs the family's member builder: call distill(..., "
                    "members=boomerang_lab.family.members.member_builder) (study.stages passes it)."
                )
            # (teacher, student, plan) -> build(k, order): zero-copy members sharing the modules of the student being
            # trained and of the frozen teacher (the student's tensors stay its own)
            self.family = members(self.teacher, self.accelerator.unwrap_model(self.model), self.plan)

    def draws(self, step: int) -> list:
        """The members of optimizer step `step`: a function of (seed, step) only (family_aware.draw_members)."""
        return draw_members(self.family_aware, self.plan, self.draw_seed, step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        masked = {} if mask is None else {"attention_mask": mask}
        labels = ids if mask is None else ids.masked_fill(mask == 0, IGNORE)
        teacher_hidden = None
        if self.loss_config.needs_teacher:
            with torch.no_grad():  # once per micro-step, shared by the student and its members
                teacher_hidden = self.teacher_backbone(
                    input_ids=ids, output_hidden_states=self.teacher_states, use_cache=False, **masked
                ).hidden_states
        out = model(input_ids=ids, output_hidden_states=bool(self.loss_config.cos_weight), use_cache=False, **masked)
        loss, terms = distill_loss(
            out.logits,
            out.hidden_states,
            teacher_hidden,
            self.teacher_head,
            labels,
            mask,
            self.alignment,
            self.loss_config,
        )
        if self.family_aware is not None and model.training:
            step = self.state.global_step
            draws = self.draws(step)
            if not self.drawn or self.drawn[-1][0] != step:  # once per optimizer step, not per micro-step
                self.drawn.append((step, draws))
            member_losses = []
            for draw in draws:
                member = self.family.build(1, Order(f"{draw.order}:{draw.k}", (draw.patched,)))  # cached per set
                with self.accelerator.autocast():  # the student's forward is autocast by accelerate's wrapper
                    member_out = member(
                        input_ids=ids, output_hidden_states=bool(self.loss_config.cos_weight), use_cache=False, **masked
                    )
                member_loss, _ = distill_loss(
                    member_out.logits,
                    member_out.hidden_states,
                    teacher_hidden,
                    self.teacher_head,
                    labels,
                    mask,
                    member_alignment(self.plan, draw.patched),
                    self.loss_config,
                )
                member_losses.append(member_loss)
            if member_losses:
                members = torch.stack(member_losses)
                terms["member_loss"] = members.detach().mean()
                loss = (loss + members.sum()) / (1 + len(member_losses))
        self._record(terms, ids)
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Also the members drawn since the last log: `k@order:patched student layers`, ';' between members and
        ' ' between steps (the train log's `members` column)."""
        if self.drawn and "loss" in logs:
            logs["members"] = " ".join(";".join(map(str, draws)) for _, draws in self.drawn)
            self.drawn = []
        super().log(logs, start_time)


class LocalTrainer(_TeacherTrainer):
    """The local stage (local.py): each multi-layer student layer maps its block's teacher input to its output."""

    def __init__(self, *args, local_loss: str = "nmse", **kwargs):
        super().__init__(*args, **kwargs)
        self.local_loss = local_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        states = teacher_block_states(self.teacher, self.plan, ids, mask)
        loss, terms = local_loss(self.accelerator.unwrap_model(model), self.plan, states, mask, self.local_loss)
        self._record(terms, ids)
        return (loss, None) if return_outputs else loss


class TermsProgress(ProgressCallback):
    """The Trainer's progress bar, showing the latest loss terms instead of printing a line per step. A plain tqdm
    bar on stderr also in a notebook, where the Trainer would otherwise print an HTML table per logged step."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = plain_tqdm(total=state.max_steps, dynamic_ncols=True)
        self.current_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" not in logs:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        if state.is_world_process_zero and self.training_bar is not None:
            shown = {k: f"{logs[k]:.4g}" for k in ("loss", "ce", "kl", "cos", "local_nmse", "local_cos") if k in logs}
            self.training_bar.set_postfix(shown)


class PrintProgress(TrainerCallback):
    """Plain lines on stdout (a terminal, or papermill's stream): the stage, about 8 lines of loss terms, a resume."""

    def __init__(self, stage: str, lines: int = 8):
        self.stage, self.lines, self.start, self.first = stage, lines, None, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first = time.perf_counter(), state.global_step
        if state.is_world_process_zero:
            resumed = f", resumed at step {state.global_step}" if state.global_step else ""
            print(f"[distill] {self.stage} stage: {state.max_steps} steps{resumed}", flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        every = max(1, state.max_steps // self.lines)
        if not state.is_world_process_zero or "loss" not in (logs or {}):
            return
        if state.global_step % every and state.global_step != state.max_steps:
            return
        terms = " ".join(f"{k} {logs[k]:.4g}" for k in ("ce", "kl", "cos", "local_nmse", "local_cos") if k in logs)
        spent = time.perf_counter() - self.start
        rate = spent / max(1, state.global_step - self.first)
        left = rate * (state.max_steps - state.global_step)
        print(
            f"[distill] {self.stage} {state.global_step}/{state.max_steps}  {terms}  "
            f"({spent:.0f} s, ~{left:.0f} s left)",
            flush=True,
        )


STAGES = ("local", "global")
"""The stages a run may have, in order: blockwise local distillation (local_steps) and the global objective."""


def distill(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    plan: LayerPlan,
    data: Dataset | IterableDataset,
    config: DistillConfig,
    tokenizer: PreTrainedTokenizerBase | None = None,
    callbacks: Sequence[TrainerCallback] = (),
    progress: bool = True,
    members: Callable | None = None,
) -> Path:
    """Train `student` towards the frozen `teacher` on token blocks (`data` rows: "input_ids"); return its directory.

    Two stages, each skipped when its step count is 0: `local_steps` of blockwise local distillation (each
    multi-layer student layer alone, in the teacher's context; distill/local.py), then `max_steps` of the global
    objective (CE + KL + cosine alignment). Checkpoints go to `<output_dir>.partial/<stage>/`; rerunning the same
    call resumes from the last complete one (a finished stage is not rerun). The student directory (model,
    tokenizer, plan files, train_log.csv, distill_config.json) appears only when done; a finished directory of the
    same run is returned as it is, one of another run is an error (see `finished`). `progress` prints a few plain
    lines per stage on stdout (besides the Trainer's bar), which papermill's stream carries to a terminal.
    `members`: the family-aware stage's member builder (`family.members.member_builder`), needed only when
    `config.family_aware` is on (the family sits above distillation, so its caller passes it in).

    The run holds the lock on `output_dir` (`locks.folder_lock`): a second run on it stops with a line naming this
    one. The student and each checkpoint get a manifest (sizes, sha256); a damaged latest checkpoint falls back to
    the one before it, and a full disk stops the run (DiskFull) with the last good checkpoint kept.
    """
    plan.check_fits(len(layers_of(teacher)), len(layers_of(student)))
    with folder_lock(config.output_dir), frozen_teacher(teacher):
        return _distill(teacher, student, plan, data, config, tokenizer, callbacks, progress, members)


def _distill(teacher, student, plan, data, config, tokenizer, callbacks, progress, members=None) -> Path:
    if finished(config, plan):
        return Path(config.output_dir)
    if "input_ids" not in (data.column_names or ["input_ids"]):
        raise ValueError(f"data must have an 'input_ids' column of token blocks, got columns {data.column_names}.")
    if config.local_steps and not plan.multi_layer:
        raise ValueError(
            f"local_steps={config.local_steps}, but {plan} has no multi-layer block to train locally; "
            f"set local_steps=0."
        )
    out = Path(config.output_dir)
    work = out.with_name(out.name + ".partial")
    run = {"config": asdict(config), "plan": plan.to_dict()}
    if (work / CONFIG_FILE).exists():
        before = json.loads((work / CONFIG_FILE).read_text())
        if before != json.loads(json.dumps(run)):
            raise ValueError(
                f"{work} holds checkpoints of a run with other settings ({before}); rerun with those "
                f"settings to resume it, or delete {work} to start afresh."
            )
    else:
        work.mkdir(parents=True, exist_ok=True)
        if int(os.environ.get("RANK", "0")) == 0:
            atomic_write_text(work / CONFIG_FILE, json.dumps(run, indent=2) + "\n")

    logs, trainer = [], None
    run_stage = functools.partial(
        _stage,
        student=student,
        teacher=teacher,
        plan=plan,
        data=data,
        config=config,
        work=work,
        tokenizer=tokenizer,
        callbacks=callbacks,
        progress=progress,
        placed={},  # the teacher moved or cast once for both stages (a copy only when it must change)
    )
    flags = {name: p.requires_grad for name, p in student.named_parameters()}
    if config.local_steps:
        only_train(student, plan)
        trainer = run_stage("local", LocalTrainer, local_loss=config.local_loss)
        logs.append(trainer.stage_log)
        restore_grad(student, flags)
    if config.max_steps:
        if config.freeze_embeddings:
            adapter = get_adapter(student)
            for path in (*adapter.embeddings, adapter.head):
                student.get_submodule(path).requires_grad_(False)
        trainer = run_stage(
            "global",
            DistillTrainer,
            loss_config=config.loss,
            family_aware=config.family_aware,
            seed=config.seed,
            members=members,
        )
        logs.append(trainer.stage_log)

    if trainer.is_world_process_zero():
        with atomic_dir(out, kept=f"the finished stages in {work} are kept") as tmp:
            student.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            plan.save(tmp)
            (tmp / CONFIG_FILE).write_text(json.dumps(run, indent=2) + "\n")
            pd.concat(logs, ignore_index=True).to_csv(tmp / LOG_FILE, index=False)
            manifest.write_manifest(tmp)
        shutil.rmtree(work)
    trainer.accelerator.wait_for_everyone()
    return out


def _train_device(config: DistillConfig) -> torch.device:
    """The device the Trainer will train on (for the bf16 check): an accelerator unless use_cpu."""
    if config.use_cpu or not torch.accelerator.is_available():
        return torch.device("cpu")
    return torch.accelerator.current_accelerator()


def _stage(
    stage: str,
    trainer_class: type[_TeacherTrainer],
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    plan: LayerPlan,
    data,
    config: DistillConfig,
    work: Path,
    tokenizer,
    callbacks,
    progress: bool,
    placed: dict,
    **objective,
) -> _TeacherTrainer:
    """Run (or resume, or reload when already finished) one stage; the trainer's `stage_log` holds its rows."""
    local = stage == "local"
    steps, lr = (config.local_steps, config.local_lr) if local else (config.max_steps, config.lr)
    folder = work / stage
    args = TrainingArguments(
        output_dir=str(folder),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=lr,
        lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup,
        adam_beta1=config.betas[0],
        adam_beta2=config.betas[1],
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        bf16=bool(config.bf16 and autocast_for("bfloat16", _train_device(config), f"distillation ({stage} stage)")),
        torch_compile=config.compile,
        activation_checkpointing=config.activation_checkpointing and not local,
        # Without an accelerator, use_cpu=False would leave each torchrun process training alone on the same files.
        use_cpu=config.use_cpu or not torch.accelerator.is_available(),
        logging_steps=config.log_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        # The local stage sees the data in another order than the global one (seed + 1).
        seed=config.seed + (1 if local else 0),
        data_seed=config.seed + (1 if local else 0),
        report_to="none",
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available() and not config.use_cpu,
        logging_nan_inf_filter=False,
    )  # the filter syncs the device every step; NaN losses are logged as they are
    trainer = trainer_class(
        model=student,
        args=args,
        train_dataset=data,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        teacher=teacher,
        plan=plan,
        teacher_dtype=config.teacher_dtype,
        placed=placed,
        **objective,
    )
    if local and trainer.accelerator.num_processes > 1:
        raise ValueError(
            "The local stage runs on one process (it calls student layers outside the DDP wrapper): "
            "distil with local_steps first on one process, then rerun with several to resume the "
            "global stage."
        )
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") and not trainer.is_fsdp_enabled:
        warnings.warn(
            f"FSDP was asked for (ACCELERATE_USE_FSDP), but accelerate shards only on GPUs and other "
            f"accelerators and runs this as {trainer.accelerator.distributed_type.value}: every process "
            f"holds the whole student and teacher.",
            stacklevel=3,
        )
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(NotebookProgressCallback)
        trainer.add_callback(TermsProgress)
    if progress:
        trainer.add_callback(PrintProgress(stage))
    trainer.add_callback(CheckpointManifest())

    done = folder / "final"
    damaged = manifest.problem(done) if (done / LOG_FILE).exists() else None
    if damaged:
        print(f"[distill] {stage} stage: {damaged}; resuming from its last good checkpoint instead", flush=True)
        shutil.rmtree(done)
    if (done / LOG_FILE).exists():  # finished before an interruption: reload its weights, rerun nothing
        _load_weights(student, done)
        trainer.stage_log = pd.read_csv(done / LOG_FILE)
        if progress and trainer.is_world_process_zero():
            print(f"[distill] {stage} stage: finished earlier, loaded from {done}", flush=True)
        return trainer
    last = _last_checkpoint(folder)
    try:
        trainer.train(resume_from_checkpoint=last)
    except Exception as err:
        if not is_disk_full(err):
            raise
        for path in folder.glob("checkpoint-*"):  # the one being written when the disk filled up
            if not (path / "trainer_state.json").exists() or not (path / manifest.MANIFEST).exists():
                shutil.rmtree(path, ignore_errors=True)
        good = _last_checkpoint(folder, quiet=True)
        kept = f"the last good checkpoint {good} is kept" if good else f"no checkpoint of {folder} was complete yet"
        with disk_full_stops(folder, kept=kept):
            raise
    trainer.stage_log = log_table(trainer.state.log_history).assign(stage=stage)
    if trainer.is_world_process_zero():
        with atomic_dir(done, kept=f"the checkpoints in {folder} are kept") as tmp:
            student.save_pretrained(tmp)
            trainer.stage_log.to_csv(tmp / LOG_FILE, index=False)
            manifest.write_manifest(tmp)
    trainer.accelerator.wait_for_everyone()
    return trainer


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
        # A field added after that run was distilled counts as its default there (a newer kit reads older runs).
        defaults = recipe(DistillConfig(), plan)["config"]
        diff = {
            k: (before["config"].get(k, defaults.get(k)), v)
            for k, v in now["config"].items()
            if before["config"].get(k, defaults.get(k)) != v
        }
        if before["plan"] != now["plan"]:
            diff["plan"] = (before["plan"], now["plan"])
        if diff:
            raise ValueError(
                f"{out} holds a student distilled with other settings (field: (there, asked)): {diff}. "
                f"Delete it to distil again, or choose another output_dir."
            )
    manifest.check(out, f"delete {out} and rerun to distil it again (notebook 01: retrain = True)")
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


def _load_weights(model: PreTrainedModel, folder: Path) -> None:
    """Load a `save_pretrained` folder's weights into `model` in place (tied weights are saved once)."""
    if (folder / "model.safetensors").exists():
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    else:
        load_sharded_checkpoint(model, str(folder), strict=False)


def log_table(log_history: list[dict]) -> pd.DataFrame:
    """The per-step rows of a Trainer log history, with the CSV's column names."""
    rows = [{column: entry.get(key) for key, column in LOG_COLUMNS.items()} for entry in log_history if "loss" in entry]
    return pd.DataFrame(rows, columns=list(LOG_COLUMNS.values()))


def _last_checkpoint(work: Path, quiet: bool = False) -> str | None:
    """The newest checkpoint whose trainer state was written (the Trainer writes it last) and whose files match its
    manifest; a damaged newer one is named and passed over."""
    complete = []
    for path in work.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        complete.append((int(path.name.rpartition("-")[2]), path))
    for _, path in sorted(complete, reverse=True):
        damaged = manifest.problem(path)
        if not damaged:
            return str(path)
        if not quiet:
            print(f"[distill] {damaged}; falling back to the checkpoint before it", flush=True)
    return None


class CheckpointManifest(TrainerCallback):
    """Give each checkpoint the usual file permissions and a manifest (sizes, sha256), written once it is complete."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            usual_permissions(folder)
            manifest.write_manifest(folder)
