"""The whole study from one command: the numbered notebooks executed in order with papermill."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file: boomerang_lab/study/)
NOTEBOOK_DIR = ROOT / "notebooks"
PIPELINE = ("01_distill", "02_interpolate", "03_evaluate", "04_figures", "05_explore", "06_alignment", "07_orders")


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it and its executed copy."""


@dataclass
class RunConfig:
    """What `run` executes and where it writes. Fields left as None follow the profile (see `resolved`)."""

    profile: str = "quick"  # a built-in profile's name or a .yaml/.json profile file (boomerang_lab.config.profiles)
    out: Path | None = None  # executed notebooks and the students; default outputs/<profile>
    teacher: str | None = None
    student: Path | None = None  # the distilled student's directory; default <out>/student
    random_init: bool | None = None  # distil <out>/student_random for the random-init baseline
    tasks: list[str] | None = None  # default: the evaluation profile's tasks
    limit: int | float | None = None  # default: the evaluation profile's limit
    orders: tuple[str, ...] | None = None
    results: Path | None = None  # the results table; default results/<profile>.csv (smoke: <out>/results.csv)
    figures: Path | None = None  # default figures/ (quick), figures/<profile>/ (others), smoke: <out>/figures
    notebooks: tuple[str, ...] = PIPELINE
    notebook_dir: Path = NOTEBOOK_DIR
    publish: bool | None = None  # write the executed notebooks over their sources; None: only for the main job

    def is_main_job(self) -> bool:
        """The main job (`make run`): the quick profile with every default. Only it writes into the committed
        figures/ and, unless told otherwise (`publish`), refreshes the committed notebooks' outputs."""
        return dataclasses.replace(self, publish=None) == RunConfig()

    def resolved(self) -> "RunConfig":
        """This config with every default filled in and every path absolute (a profile file's too, since the
        notebooks run in their own folder and read the profile by this name)."""
        from ..config.profiles import get, is_profile_file

        profile = get(self.profile)
        name = str(Path(self.profile).resolve()) if is_profile_file(self.profile) else self.profile
        smoke = profile.name == "smoke"
        out = Path(self.out or ROOT / "outputs" / profile.name).resolve()
        figures = self.figures or (
            out / "figures"
            if smoke
            else ROOT / "figures"
            if profile.name == "quick"
            else ROOT / "figures" / profile.name
        )
        results = self.results or (out / "results.csv" if smoke else ROOT / "results" / f"{profile.name}.csv")
        pipeline = profile.pipeline
        return dataclasses.replace(
            self,
            profile=name,
            out=out,
            teacher=self.teacher or profile.teacher,
            random_init=pipeline.random_init if self.random_init is None else self.random_init,
            orders=tuple(self.orders or pipeline.orders),
            student=Path(self.student or out / "student").resolve(),
            results=Path(results).resolve(),
            figures=Path(figures).resolve(),
            notebook_dir=Path(self.notebook_dir).resolve(),
        )

    def written(self) -> list[Path]:
        """What a (resolved) run writes: its output folder, the students and the results table."""
        return [self.out, self.student, self.results] + ([self.out / "student_random"] if self.random_init else [])

    def parameters(self) -> dict:
        """The values the notebooks' `parameters` cells receive (each notebook gets the ones it declares)."""
        random_student = str(self.out / "student_random") if self.random_init else None
        return {
            "profile": self.profile,
            "teacher": self.teacher,
            "student": str(self.student),
            "random_student": random_student,
            "tasks": self.tasks,
            "limit": self.limit,
            "orders": list(self.orders),
            "results": str(self.results),
            "figures": str(self.figures),
        }


def _encrypted_kernel_manager():
    """nbclient's kernel manager, asking for CurveZMQ transport encryption where pyzmq has it ("auto").

    Without it ipykernel warns on every notebook that its TCP traffic is plain text; with "auto" the manager gives the
    kernel keys when its kernelspec declares support (ipykernel's does) and otherwise starts it as before.
    """
    import zmq
    from jupyter_client import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            if zmq.has("curve"):
                self.transport_encryption = "auto"

    return KernelManager


def run(config: RunConfig | str = "quick", progress: bool = True, **overrides) -> Path:
    """Execute the pipeline's notebooks in order into `config.out`, stopping at the first failure (PipelineError).

    `overrides` are RunConfig fields, e.g. run("smoke", out=tmp_path). Returns the output folder. With `publish`
    (by default only for the main job), the executed notebooks, cleaned (`boomerang_lab.study.publish`), then replace
    their sources, so that the committed notebooks show the main job's figures and tables.

    The run holds the locks (`locks.folder_lock`) of the folders and table it writes (`written`) for its whole
    length and passes them on to its notebook kernels; a second run on any of them stops at once, naming this one.
    """
    from ..store.locks import folder_locks

    config = RunConfig(config, **overrides) if isinstance(config, str) else dataclasses.replace(config, **overrides)
    publish = config.is_main_job() if config.publish is None else config.publish
    config = config.resolved()
    sources = [config.notebook_dir / f"{name}.ipynb" for name in config.notebooks]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise FileNotFoundError(f"Notebooks not found: {', '.join(missing)}.")
    config.out.mkdir(parents=True, exist_ok=True)
    with folder_locks(*config.written()):
        _execute(config, sources, publish, progress)
    return config.out


def _execute(config: RunConfig, sources: list[Path], publish: bool, progress: bool) -> None:
    import papermill

    parameters = config.parameters()
    for i, source in enumerate(sources, 1):
        executed = config.out / source.name
        declared = papermill.inspect_notebook(str(source))
        print(f"[{i}/{len(sources)}] {source.name} -> {executed}", flush=True)
        start = time.perf_counter()
        try:
            # The notebook's printed lines (the distillation's steps and loss terms, a resume, the sweep's models)
            # also reach this terminal, not only the executed notebook.
            papermill.execute_notebook(
                str(source),
                str(executed),
                cwd=str(source.parent),
                progress_bar=progress,
                parameters={k: v for k, v in parameters.items() if k in declared},
                stdout_file=sys.stdout if progress else None,
                kernel_manager_class=_encrypted_kernel_manager(),
            )
        except Exception as err:
            raise PipelineError(
                f"{source.name} failed ({_describe(err)}); stopped before "
                f"{', '.join(s.name for s in sources[i:]) or 'the end'}. The executed copy with the "
                f"traceback is {executed}."
            ) from err
        print(f"    done in {time.perf_counter() - start:.0f} s", flush=True)
    if publish:  # only once every notebook ran, so that the committed ones come from one run
        from .publish import publish as publish_notebook

        for source in sources:
            publish_notebook(config.out / source.name, source)
        print(
            f"Published the executed notebooks over {', '.join(s.name for s in sources)} in {config.notebook_dir}",
            flush=True,
        )


def _describe(err: Exception) -> str:
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename is not None:
        return f"cell {err.cell_index}: {ename}: {evalue}"
    return f"{type(err).__name__}: {err}"
