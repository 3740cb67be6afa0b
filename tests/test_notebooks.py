"""The committed notebooks: each runs (papermill, smoke profile), its parameters cell matches what the pipeline passes
and every parameter is used; their outputs, when the main job published some, are fit to commit."""

import ast
import json
import re
from pathlib import Path

import nbformat
import papermill
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from boomerang_lab.study import pipeline
from boomerang_lab.study.cli import main
from boomerang_lab.study.pipeline import NOTEBOOK_DIR, PIPELINE, PipelineError, RunConfig, run
from boomerang_lab.study.publish import WIDGET_NOTE, problems, publish

NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
FIGURES = ("size_curves", "perplexity_vs_size", "loss_curves", "alignment", "07_orders", "07_orders_run")
PIPELINE_INPUTS = {
    "01_distill": {"profile", "teacher", "student", "random_student"},
    "02_interpolate": {"profile", "orders", "teacher", "student"},
    "03_evaluate": {"profile", "teacher", "student", "random_student", "tasks", "limit", "orders", "results"},
    "04_figures": {"student", "random_student", "results", "figures"},
    "05_explore": {"profile", "orders", "teacher", "student", "results"},
    "06_alignment": {"teacher", "student", "random_student", "figures"},
    "07_orders": {"profile", "orders", "teacher", "student", "results", "figures"},
}
"""What each pipeline notebook takes from `RunConfig.parameters()` (the names must be the pipeline's)."""
KNOBS = {
    "01_distill": {"retrain"},
    "02_interpolate": {"device", "prompt", "max_new_tokens"},
    "03_evaluate": {"device"},
    "04_figures": set(),
    "05_explore": {"device"},
    "06_alignment": {"device", "num_sequences", "seq_len"},
    "07_orders": {"study", "device", "compare"},
}
"""The notebook's own settings, which the pipeline leaves at their defaults."""
STUDY_NOTEBOOKS = {"09_direct_vs_family": {"profile": "smoke"}}
"""Notebooks outside the pipeline that read committed study results, committed with their outputs (published from a
run with their defaults); each runs in the tests with these parameters."""


def _read(name):
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def _defaults(name) -> dict:
    return {
        k: ast.literal_eval(v["default"])
        for k, v in papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb")).items()
    }


def _names_used(nb) -> set[str]:
    code = "\n".join(
        c.source for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])
    )
    return {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def errors(path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]


# --- the sources ---------------------------------------------------------------------------------------------------
def test_every_pipeline_notebook_is_known():
    assert set(PIPELINE) == set(PIPELINE_INPUTS) and set(PIPELINE) <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_parameters_cell_under_a_set_up_heading_and_every_parameter_used(name):
    nb = _read(name)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    if name in PIPELINE:
        above = [c.source for c in nb.cells[: tagged[0]] if c.cell_type == "markdown"]
        assert above and above[-1].startswith("## Set-up"), "the parameters sit under a Set-up heading"
        reading = [i for i, c in enumerate(nb.cells) if c.source.startswith("## Reading the result")]
        assert reading and nb.cells[reading[-1]].cell_type == "markdown", "a Reading the result heading"
        rest = nb.cells[reading[-1] + 1 :]
        assert all(c.cell_type == "code" for c in rest) and len(rest) <= 1, (
            "the reading: prose, or one cell rendering it"
        )
        assert nb.cells[0].cell_type == "markdown" and len(nb.cells[0].source) > 400  # an introduction, in prose
    unused = set(_defaults(name)) - _names_used(nb)
    assert not unused, f"{name} declares parameters it never uses: {sorted(unused)}"


@pytest.mark.parametrize("name", PIPELINE)
def test_parameters_cell_matches_what_the_pipeline_passes(name):
    defaults = _defaults(name)
    main_job = RunConfig().resolved().parameters()
    assert set(defaults) & set(main_job) == PIPELINE_INPUTS[name]
    assert set(defaults) - set(main_job) == KNOBS[name]
    for key in PIPELINE_INPUTS[name]:  # run by hand, a notebook does what the main job does, but never writes figures/
        default, passed = defaults[key], main_job[key]
        if key == "figures":
            assert default is None, f"{name}: by default, figures are only shown"
        elif key == "orders":  # None: the profile's orders, which the pipeline passes resolved
            assert default is None, f"{name}: the orders come from the profile, never hard-coded"
        elif isinstance(default, str) and default.startswith(".."):
            assert (NOTEBOOK_DIR / default).resolve() == Path(passed), (name, key)
        else:
            assert default == passed, (name, key)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_fit_to_commit(name):
    """Without outputs (a source), or with the main job's published outputs: every code cell run, no error, no
    absolute or temporary path, no widget state, no papermill cell, a modest size."""
    nb = _read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    if any(c.outputs or c.execution_count is not None for c in code):
        assert name in PIPELINE or name in STUDY_NOTEBOOKS, (
            f"{name} is not run by the main job, so it carries no outputs"
        )
        assert all(c.execution_count is not None for c in code), f"{name}: a partly executed notebook"
        assert problems(nb) == []


# --- quoted numbers --------------------------------------------------------------------------------------------------
QUOTED = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d+(?=\s?%))(\s?%)?(?![\w.])")
"""A number prose quotes as a result: with decimals, with thousands separators, or a percentage. Plain integers
("30 layers", "notebook 03", "64 windows") are structure, not results, and are not checked."""
SHOWN = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?")
STRUCTURAL: dict[str, set[str]] = {}
"""Numbers a notebook's Markdown may quote without showing them: none at present. Add {notebook: {"2.1"}} only for
a number that describes the method rather than a result (and say why here)."""


def _shown_numbers(nb) -> list[float]:
    values = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            texts = [out.get("text", "")] + [v for v in out.get("data", {}).values() if isinstance(v, str)]
            for text in texts:
                for token in SHOWN.findall(text):
                    try:
                        values.append(float(token.replace(",", "")))
                    except ValueError:
                        continue
    return values


def unshown_numbers(nb, allowed: set[str] = frozenset()) -> list[str]:
    """The numbers the notebook's Markdown cells quote that none of its outputs shows (within the quoted rounding:
    0.51 matches a shown 0.5123; a percentage also matches a shown share, 26 % ~ 0.26, or ratio, 26 % ~ 1.26)."""
    shown = _shown_numbers(nb)
    missing = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for number, percent in QUOTED.findall(cell.source):
            if number in allowed:
                continue
            value = float(number.replace(",", ""))
            decimals = len(number.partition(".")[2])
            tolerance = 0.5 * 10**-decimals * (1 + 1e-9)
            candidates = [(v, v * 100, (v - 1) * 100) if percent else (v,) for v in shown]
            if not any(abs(c - value) <= tolerance for group in candidates for c in group):
                missing.append(number + percent)
    return missing


def test_unshown_numbers_finds_a_stale_quote():
    nb = new_notebook(cells=[new_markdown_cell("falls from 0.51 to 0.14, 1,115 against 26 % and 30 layers")])
    cell = new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="0.5123 1115.2 1.26\n")]
    nb.cells.append(cell)
    assert unshown_numbers(nb) == ["0.14"]
    assert unshown_numbers(nb, {"0.14"}) == []


@pytest.mark.parametrize("name", PIPELINE)
def test_committed_prose_quotes_only_numbers_its_outputs_show(name):
    """The committed notebook's Markdown quotes no result its outputs do not show (readings are rendered from the
    computed values, so their numbers are outputs); a notebook without outputs (not yet published) has none."""
    nb = _read(name)
    if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        pytest.skip(f"{name} carries no outputs yet (the smoke run checks its prose)")
    assert unshown_numbers(nb, STRUCTURAL.get(name, set())) == []


# --- running them ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke pipeline (every notebook of PIPELINE, the committed sources) run once into a temporary folder."""
    out = tmp_path_factory.mktemp("smoke")
    run("smoke", out=out, progress=False)
    return out


def test_smoke_pipeline_executes_every_notebook_into_the_output_folder(smoke):
    for name in PIPELINE:
        assert (smoke / f"{name}.ipynb").exists() and not errors(smoke / f"{name}.ipynb"), name
    assert (smoke / "student" / "train_log.csv").exists() and (smoke / "student_random" / "train_log.csv").exists()
    results = (smoke / "results.csv").read_text().splitlines()
    assert results[0].startswith("teacher,student,method,order,k,layers,params,task,metric,value,stderr,limit")
    assert len(results) > 10
    for figure in FIGURES:
        for fmt in ("png", "pdf"):
            assert (smoke / "figures" / f"{figure}.{fmt}").stat().st_size > 1000, (figure, fmt)
    speeds = json.loads((smoke / "student" / "speed.json").read_text())  # 05 timed members, cached by the student
    assert speeds and all(v > 0 for v in speeds.values())
    for name in PIPELINE:
        nb = nbformat.read(smoke / f"{name}.ipynb", as_version=4)
        assert unshown_numbers(nb, STRUCTURAL.get(name, set())) == [], name
        html = "".join(
            o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
        )
        assert "<progress" not in html, f"{name}: the Trainer's HTML progress table"


@pytest.mark.parametrize("name", STUDY_NOTEBOOKS)
def test_study_notebook_runs_under_papermill_and_saves_its_figure(name, tmp_path):
    executed = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / f"{name}.ipynb"),
        str(executed),
        cwd=str(NOTEBOOK_DIR),
        parameters={**STUDY_NOTEBOOKS[name], "figures": str(tmp_path)},
        progress_bar=False,
        kernel_manager_class=pipeline._encrypted_kernel_manager(),
    )
    assert not errors(executed)
    assert [p.suffix for p in tmp_path.glob("*.png")] == [".png"]
    published = nbformat.read(publish(executed, tmp_path / "published" / f"{name}.ipynb"), as_version=4)
    assert problems(published) == [] and _images(published) >= 1


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_publishing_cleans_the_executed_notebooks(smoke, tmp_path):
    for name in PIPELINE:
        target = publish(smoke / f"{name}.ipynb", tmp_path / f"{name}.ipynb")
        nb = nbformat.read(target, as_version=4)
        assert problems(nb) == [] and str(smoke) not in target.read_text(), name
        assert [c.source for c in nb.cells] == [c.source for c in _read(name).cells], name  # the source's cells
        assert not [
            o
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.outputs
            if o.output_type == "stream" and o.name == "stderr"
        ]
        assert _images(nb) >= 1, f"{name} shows no figure"
        assert target.stat().st_size < 1_500_000, name
    explorer = nbformat.read(tmp_path / "05_explore.ipynb", as_version=4)
    assert WIDGET_NOTE in nbformat.writes(explorer)


def test_publish_refuses_a_notebook_with_an_error(tmp_path):
    _notebook(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('no')")
    with pytest.raises(PipelineError):
        run("smoke", out=tmp_path / "out", notebook_dir=tmp_path, notebooks=("bad",), progress=False, publish=True)
    with pytest.raises(ValueError, match=r"Not publishing .*an error output \(ValueError: no\)"):
        publish(tmp_path / "out" / "bad.ipynb", tmp_path / "bad.ipynb")
    assert not nbformat.read(tmp_path / "bad.ipynb", as_version=4).cells[1].outputs  # the source is untouched


def test_run_publishes_over_the_sources_only_when_every_notebook_ran(tmp_path):
    _notebook(tmp_path / "a_ok.ipynb", "figures = None", f"print('ran in', {str(tmp_path)!r})")
    _notebook(tmp_path / "b_ok.ipynb", "figures = None", "print('b')")
    run("smoke", out=tmp_path / "out", notebook_dir=tmp_path, notebooks=("a_ok", "b_ok"), progress=False, publish=True)
    published = nbformat.read(tmp_path / "a_ok.ipynb", as_version=4)
    assert len(published.cells) == 2 and published.cells[1].outputs[0].text == "ran in <tmp>\n"
    _notebook(tmp_path / "c_bad.ipynb", "figures = None", "raise ValueError('no')")
    _notebook(tmp_path / "a_ok.ipynb", "figures = None", "print('again')")
    with pytest.raises(PipelineError):
        run(
            "smoke",
            out=tmp_path / "out2",
            notebook_dir=tmp_path,
            notebooks=("a_ok", "c_bad"),
            progress=False,
            publish=True,
        )
    assert not nbformat.read(tmp_path / "a_ok.ipynb", as_version=4).cells[1].outputs


def test_only_the_main_job_publishes_and_writes_the_committed_figures(tmp_path):
    assert RunConfig().is_main_job() and RunConfig("quick").is_main_job()
    assert not RunConfig("quick", out=tmp_path).is_main_job() and not RunConfig("smoke").is_main_job()
    assert not RunConfig("quick", limit=5).is_main_job() and not RunConfig("quick", figures=tmp_path).is_main_job()
    config = RunConfig("smoke", out=tmp_path).resolved()
    assert config.figures == tmp_path / "figures" and config.results == tmp_path / "results.csv"
    quick = RunConfig("quick").resolved()
    assert quick.figures == pipeline.ROOT / "figures" and quick.results == pipeline.ROOT / "results" / "quick.csv"
    assert RunConfig("paper").resolved().figures == pipeline.ROOT / "figures" / "paper"
    assert RunConfig("paper", random_init=False).resolved().parameters()["random_student"] is None
    with pytest.raises(ValueError, match="Unknown profile 'fast'"):
        RunConfig("fast").resolved()


def _notebook(path, *sources):
    nb = new_notebook(
        cells=[new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)


def test_a_failing_notebook_stops_the_run_and_is_named(tmp_path):
    _notebook(tmp_path / "a_ok.ipynb", "figures = None", "open(figures, 'w').write('ran')")
    _notebook(tmp_path / "b_bad.ipynb", "profile = None", "raise ValueError(f'broken on purpose in {profile}')")
    _notebook(tmp_path / "c_next.ipynb", "figures = None", "open(figures + '.c', 'w').write('ran')")
    marker = tmp_path / "marker"
    with pytest.raises(
        PipelineError,
        match=r"b_bad.ipynb failed \(cell \d+: ValueError: broken on purpose in smoke\); "
        r"stopped before c_next.ipynb",
    ):
        run(
            "smoke",
            out=tmp_path / "out",
            figures=marker,
            notebook_dir=tmp_path,
            notebooks=("a_ok", "b_bad", "c_next"),
            progress=False,
        )
    assert marker.read_text() == "ran" and not marker.with_suffix(".c").exists()
    assert errors(tmp_path / "out" / "b_bad.ipynb") == ["ValueError: broken on purpose in smoke"]


def test_missing_notebook_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Notebooks not found: .*nope.ipynb"):
        run("smoke", out=tmp_path, notebook_dir=tmp_path, notebooks=("nope",))


def test_cli_run_passes_options_and_exits_with_the_failure(monkeypatch):
    seen = {}

    def fake_run(profile, **options):
        seen.update(options, profile=profile)
        raise PipelineError("03_evaluate.ipynb failed (cell 3: KeyError: 'x')")

    monkeypatch.setattr(pipeline, "run", fake_run)
    with pytest.raises(SystemExit, match=r"boomerang run: 03_evaluate.ipynb failed \(cell 3: KeyError: 'x'\)"):
        main(
            [
                "run",
                "--profile",
                "smoke",
                "--out",
                "o",
                "--tasks",
                "piqa_local",
                "arc_easy_local",
                "--limit",
                "5",
                "--no-random-init",
                "--no-publish",
            ]
        )
    assert seen == {
        "profile": "smoke",
        "out": "o",
        "tasks": ["piqa_local", "arc_easy_local"],
        "limit": 5,
        "random_init": False,
        "publish": False,
    }


def test_run_streams_the_notebooks_prints_without_the_kernels_plain_tcp_warning(tmp_path, capfd):
    """`boomerang run` shows what the notebooks print; ipykernel's "running over TCP without encryption" warning is
    gone where pyzmq has CurveZMQ (the kernel manager provisions keys), instead of being printed once per notebook."""
    import zmq

    _notebook(tmp_path / "a.ipynb", "figures = None", "print('a notebook line')")
    run("smoke", out=tmp_path / "out", notebook_dir=tmp_path, notebooks=("a",), progress=True)
    out, err = capfd.readouterr()
    assert "a notebook line" in out
    if zmq.has("curve"):
        assert "without encryption" not in out + err
