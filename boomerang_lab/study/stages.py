"""One call per notebook stage, so that the notebooks hold no logic and a recipe change needs no notebook edit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config.profiles import Profile, distill_config, get
from ..models.plan import LayerPlan
from ..store.locks import folder_lock


def distill_students(
    profile: str | Profile,
    teacher_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    plan: LayerPlan,
    student: str | Path,
    random_student: str | Path | None = None,
    teacher: str | None = None,
    retrain: bool = False,
    data: dict | None = None,
) -> dict[str, Path]:
    """Notebook 01's stage: distil the teacher-initialised student into `student` (and, when `random_student` is
    given, a randomly initialised one of the same shape, the random-init baseline) with the profile's recipe, on the
    training corpus under data/corpus (or the text `data` names: `packed_blocks`' source, name, split and
    text_field; `boomerang distill --data`), each holding the directory's lock (`locks.folder_lock`). A directory that
    holds a finished run of the same recipe is reused (one of another recipe is an error) unless `retrain`. Returns
    {run name: student directory}."""
    from ..data import packed_blocks
    from ..distill.trainer import distill, finished
    from ..family.members import member_builder
    from ..models.student import init_student

    runs = {"teacher-initialised": (Path(student), False)}
    if random_student:
        runs["random-init"] = (Path(random_student), True)
    overrides = {"teacher": teacher} if teacher else {}
    blocks = None
    for name, (path, random_init) in runs.items():
        config = distill_config(
            profile, output_dir=str(path), student_init="random" if random_init else "teacher", **overrides
        )
        with folder_lock(path):  # one writer per student directory (a second run stops, naming this one)
            if retrain:
                shutil.rmtree(path, ignore_errors=True)
            if finished(config, plan):
                print(f"{name}: reusing {path.name}/, distilled with this recipe (set retrain = True to distil again)")
                continue
            if blocks is None:
                blocks = packed_blocks(tokenizer, seq_len=config.seq_len, packing=config.packing, **(data or {}))
            start = init_student(teacher_model, plan, random_init=random_init, seed=config.seed)
            distill(teacher_model, start, plan, blocks, config, tokenizer, members=member_builder)
    with folder_lock(Path(student)):
        search_orders(profile, teacher_model, student)
    return {name: path for name, (path, _) in runs.items()}


def distill_direct(
    profile: str | Profile,
    teacher_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    plan: LayerPlan,
    size: int | None = None,
    layers: int | None = None,
    order: str = "last",
    family_student: str | Path | None = None,
    out: str | Path | None = None,
    data: dict | None = None,
) -> Path:
    """`boomerang distill --size k` / `--layers N`: a student distilled directly at the family's size `size` (or the
    size whose member has `layers` layers) of `order`, initialised with that member's teacher layers, with the
    profile's recipe (`evaluate.direct.direct_student`). Orders computed from the family (local, klpatch) need
    `family_student`, the family's distilled student; `data` as for `distill_students`. Returns its directory."""
    from ..data import packed_blocks
    from ..evaluate.direct import direct_student, resolve_order, size_for_layers
    from ..family.members import Family
    from ..models.loading import load_student

    chosen = get(profile)
    family = None
    if family_student:
        student, _, student_plan = load_student(family_student)
        if student_plan != plan:
            raise ValueError(f"{family_student} has the plan {student_plan}; the profile's is {plan}.")
        family = Family(teacher_model, student, plan)
    resolved = resolve_order(plan, order, family)
    size = size_for_layers(plan, resolved, layers) if size is None else size
    out = out or f"runs/{chosen.name}/direct_k{size}_{resolved.name}"
    config = chosen.distill
    blocks = packed_blocks(tokenizer, seq_len=config.seq_len, packing=config.packing, **(data or {}))
    return direct_student(teacher_model, tokenizer, plan, size, resolved, chosen, out, family=family, data=blocks)


def search_orders(profile: str | Profile, teacher_model: PreTrainedModel, student: str | Path) -> dict:
    """Search the profile's KL-searched orders (`klpatch`, `optimal` among `pipeline.orders`) for the student with
    the profile's `pipeline.search` settings, once, and save each next to the student (`order_<name>.json`, with
    its settings and seconds): every later Family of this student (notebooks 02-07, the explorer, `evaluate`) reads
    it from there instead of searching again. Returns {name: Order}."""
    import time

    from ..family.members import Family
    from ..family.search import SEARCHES, search
    from ..models.loading import load_student

    pipeline = get(profile).pipeline
    names = [name for name in pipeline.orders if name in SEARCHES]
    if not names:
        return {}
    student_model, _, plan = load_student(student, device=teacher_model.device)
    family = Family(teacher_model, student_model, plan)
    family.search_config = pipeline.search
    found = {}
    for name in names:
        saved = Path(student, f"order_{name}.json")
        before = saved.read_text() if saved.exists() else None
        start = time.perf_counter()
        found[name] = search(family, name)
        seconds = time.perf_counter() - start
        after = saved.read_text() if saved.exists() else None
        line = search_line(name, before, after, seconds, pipeline.search)
        print(f"{name} order: {[list(step) for step in found[name].steps]} ({line})")
    return found


def search_line(name: str, before: str | None, after: str | None, seconds: float, config=None) -> str:
    """How `search_orders` got the `name` order, for the line it prints: `before` and `after` are the saved
    order_<name>.json's text before and after the search call (None: no file), `seconds` the call's. Unchanged, the
    saved order was reused: "reused the saved order_klpatch.json (searched in 322 s; 4 x 256 calibration tokens,
    every 1 scored, autocast None)", with the seconds and settings saved with it. Otherwise it was searched now:
    "searched in 52 s; ...", with this call's seconds. The settings are the saved ones, else `config`'s (a
    SearchConfig)."""
    record = json.loads(after) if after else {}
    c = record.get("search") or (vars(config) if config is not None else {})
    settings = (
        f"{c.get('num_sequences')} x {c.get('seq_len')} calibration tokens, every {c.get('stride')} scored, "
        f"autocast {c.get('autocast')}"
        if c
        else "settings not saved"
    )
    if before is not None and before == after:
        saved = record.get("seconds")
        took = f"searched in {saved:.0f} s" if isinstance(saved, (int, float)) else "its search time not saved"
        return f"reused the saved order_{name}.json ({took}; {settings})"
    return f"searched in {seconds:.0f} s; {settings}"
