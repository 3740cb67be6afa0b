"""The whole study from one command: the numbered notebooks executed in order with papermill."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
PIPELINE = ("01_distill", "02_interpolate", "03_evaluate", "04_figures", "06_alignment")


@dataclass(frozen=True)
class Profile:
    """A pipeline profile's defaults (the recipe and evaluation settings are distill's and evaluate's profiles)."""

    teacher: str
    random_init: bool  # also distil a randomly initialised student: the random-init baseline
    orders: tuple[str, ...]  # the patch orders evaluated


PROFILES = {"smoke": Profile("smollm2-tiny-random", True, ("last",)),
            "quick": Profile("smollm2-135m", False, ("last",)),
            "paper": Profile("smollm2-135m", True, ("last", "first", "klpatch", "optimal"))}
"""smoke: seconds on a tiny random model (every code path); quick: the CPU main job; paper: a GPU."""


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; the message names it and its executed copy."""


@dataclass
class RunConfig:
    """What `run` executes and where it writes. Fields left as None follow the profile (see `resolved`)."""

    profile: str = "quick"
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

    def resolved(self) -> "RunConfig":
        """This config with every default filled in and every path absolute."""
        if self.profile not in PROFILES:
            raise ValueError(f"Unknown profile {self.profile!r}; use one of {', '.join(PROFILES)}.")
        profile = PROFILES[self.profile]
        smoke = self.profile == "smoke"
        out = Path(self.out or ROOT / "outputs" / self.profile).resolve()
        figures = self.figures or (out / "figures" if smoke else ROOT / "figures" if self.profile == "quick"
                                   else ROOT / "figures" / self.profile)
        results = self.results or (out / "results.csv" if smoke else ROOT / "results" / f"{self.profile}.csv")
        return dataclasses.replace(self, out=out, teacher=self.teacher or profile.teacher,
                                   random_init=profile.random_init if self.random_init is None else self.random_init,
                                   orders=tuple(self.orders or profile.orders),
                                   student=Path(self.student or out / "student").resolve(),
                                   results=Path(results).resolve(), figures=Path(figures).resolve(),
                                   notebook_dir=Path(self.notebook_dir).resolve())

    def parameters(self) -> dict:
        """The values the notebooks' `parameters` cells receive (each notebook gets the ones it declares)."""
        random_student = str(self.out / "student_random") if self.random_init else None
        return {"profile": self.profile, "teacher": self.teacher, "student": str(self.student),
                "random_student": random_student, "tasks": self.tasks, "limit": self.limit, "orders": list(self.orders),
                "results": str(self.results), "figures": str(self.figures)}


def run(config: RunConfig | str = "quick", progress: bool = True, **overrides) -> Path:
    """Execute the pipeline's notebooks in order into `config.out`, stopping at the first failure (PipelineError).

    `overrides` are RunConfig fields, e.g. run("smoke", out=tmp_path). Returns the output folder.
    """
    import papermill

    config = RunConfig(config, **overrides) if isinstance(config, str) else dataclasses.replace(config, **overrides)
    config = config.resolved()
    sources = [config.notebook_dir / f"{name}.ipynb" for name in config.notebooks]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise FileNotFoundError(f"Notebooks not found: {', '.join(missing)}.")
    config.out.mkdir(parents=True, exist_ok=True)
    parameters = config.parameters()
    for i, source in enumerate(sources, 1):
        executed = config.out / source.name
        declared = papermill.inspect_notebook(str(source))
        print(f"[{i}/{len(sources)}] {source.name} -> {executed}", flush=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(source), str(executed), cwd=str(source.parent), progress_bar=progress,
                                       parameters={k: v for k, v in parameters.items() if k in declared})
        except Exception as err:
            raise PipelineError(f"{source.name} failed ({_describe(err)}); stopped before "
                                f"{', '.join(s.name for s in sources[i:]) or 'the end'}. The executed copy with the "
                                f"traceback is {executed}.") from err
        print(f"    done in {time.perf_counter() - start:.0f} s", flush=True)
    return config.out


def _describe(err: Exception) -> str:
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename is not None:
        return f"cell {err.cell_index}: {ename}: {evalue}"
    return f"{type(err).__name__}: {err}"
