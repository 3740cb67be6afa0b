"""Every notebook executed by papermill in the smoke profile (tiny random teacher), and the pipeline's failure path."""
import nbformat
import papermill
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from boomerang_lab import pipeline
from boomerang_lab.cli import main
from boomerang_lab.pipeline import NOTEBOOK_DIR, PIPELINE, PipelineError, run

OURS = (*PIPELINE, "05_explore")
FIGURES = ("size_curves", "perplexity_vs_size", "loss_curves", "alignment")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke pipeline (01→04, 06) run once into a temporary folder."""
    out = tmp_path_factory.mktemp("smoke")
    run("smoke", out=out, progress=False)
    return out


def errors(path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]


@pytest.mark.parametrize("name", OURS)
def test_sources_have_a_parameters_cell_and_no_outputs(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert "profile" in papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)


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


def test_explore_notebook(smoke):
    executed = smoke / "05_explore.ipynb"
    papermill.execute_notebook(str(NOTEBOOK_DIR / "05_explore.ipynb"), str(executed), cwd=str(smoke),
                               progress_bar=False, parameters={"profile": "smoke", "teacher": "smollm2-tiny-random",
                                                               "student": str(smoke / "student"),
                                                               "results": str(smoke / "results.csv")})
    assert not errors(executed)


def test_smoke_defaults_never_write_into_the_committed_figures(tmp_path):
    config = pipeline.RunConfig("smoke", out=tmp_path).resolved()
    assert config.figures == tmp_path / "figures" and config.results == tmp_path / "results.csv"
    quick, paper = pipeline.RunConfig("quick").resolved(), pipeline.RunConfig("paper", random_init=False).resolved()
    assert quick.figures == pipeline.ROOT / "figures" and not quick.random_init and quick.orders == ("last",)
    assert paper.figures == pipeline.ROOT / "figures" / "paper" and not paper.random_init and len(paper.orders) == 4
    assert paper.parameters()["random_student"] is None
    with pytest.raises(ValueError, match="Unknown profile 'fast'; use one of smoke, quick, paper"):
        pipeline.RunConfig("fast").resolved()


def _notebook(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)


def test_a_failing_notebook_stops_the_run_and_is_named(tmp_path):
    _notebook(tmp_path / "a_ok.ipynb", "figures = None", "open(figures, 'w').write('ran')")
    _notebook(tmp_path / "b_bad.ipynb", "profile = None", "raise ValueError(f'broken on purpose in {profile}')")
    _notebook(tmp_path / "c_next.ipynb", "figures = None", "open(figures + '.c', 'w').write('ran')")
    marker = tmp_path / "marker"
    with pytest.raises(PipelineError, match=r"b_bad.ipynb failed \(cell \d+: ValueError: broken on purpose in smoke\); "
                                            r"stopped before c_next.ipynb"):
        run("smoke", out=tmp_path / "out", figures=marker, notebook_dir=tmp_path,
            notebooks=("a_ok", "b_bad", "c_next"), progress=False)
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
        main(["run", "--profile", "smoke", "--out", "o", "--tasks", "piqa_local", "arc_easy_local", "--limit", "5",
              "--no-random-init"])
    assert seen == {"profile": "smoke", "out": "o", "tasks": ["piqa_local", "arc_easy_local"], "limit": 5,
                    "random_init": False}
