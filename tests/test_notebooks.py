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
STUDY_NOTEBOOKS = {"08_off_the_shelf": {"offline": True}, "09_direct_vs_family": {"profile": "smoke"}}
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


# --- quoted numbers, named panels and columns, promised figures -----------------------------------------------------
QUOTED = re.compile(r"(?<![\w.,^/#-])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d+)(\s?%)?(?![\w.]|,\d|-\w|\^)")
"""A number prose quotes: with decimals, with thousands separators, a percentage, or a plain integer ("64 windows")."""
SHOWN = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][+-]?\d+)?")
METHOD_CONSTANTS = {"0", "1", "2"}
"""Plain integers prose may use without an output showing them: k = 0 (the student), "1 at the student, 0 at the
teacher" (the curve's scale), "2-layer blocks" and "2 combined stderrs" (the plan's block size and the criterion's
bar). Every other integer a sentence quotes (a setting such as 64 windows or 4,096 tokens, a count, a layer) must
appear in an output of its section, where the reader can check it."""
NOT_QUOTES = re.compile(
    r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|\b[Ss]teps? \d\b|\bnotebooks? \d\d(?:\s*(?:-|–|→|and)\s*\d\d)*"
    r"|\b(?:Figures?|Fig\.|Tables?)\s+\d+(?:\s*(?:and|,|–|-)\s*\d+)*|\bet al\.,? \d{4}|\b(?:ICLR|arXiv:?) [\d.]+"
    r"|^#+ \d\d ·|^\s*\d+\. |\b0\d\b|https?://\S+|\]\([^)]*\)",
    re.S | re.M,
)
"""What in a Markdown cell is no quoted result: code blocks and spans (names, commands), math, notebook numbers
("notebook 03", "01-07", "03's": a zero-padded number is a notebook's), the paper's figure and table numbers,
citations' years, the title's number, list numbering, links."""
STRUCTURAL: dict[str, set[str]] = {}
"""Numbers a notebook's Markdown may quote without showing them in its section: none at present. Add
{notebook: {"2.1"}} only for a number that describes the method rather than a result (and say why here)."""
VOCABULARY = {
    "local_nmse",
    "local_cos",
    "ce",
    "kl",
    "cos",
    "lr",
    "token_perplexity",
    "word_perplexity",
    "byte_perplexity",
    "acc",
    "acc_norm",
    "limit",
    "area",
    "signed_area",
    "score",
    "above_line",
    "log_rise",
    "log_gap",
    "violations",
    "worst_violation",
    "kl_objective",
    "measured",
    "seconds",
}
"""Names of metrics, loss terms and table columns: one that prose names in backticks (a panel, a column) must appear
in the outputs of its section (a printed panel list, a table header)."""
METRICS = {"perplexity": ("perplexity", "ppl"), "accuracy": ("acc",), "cosine": ("cos",), "loss": ("loss",)}
"""A metric a heading names, and the tokens of it the section's code must use (the metric it plots or tabulates)."""


def sections(nb) -> list[dict]:
    """The notebook split at Markdown headings: each section's heading, prose and outputs (text of every output of
    its code cells) and code. A Markdown cell with a heading inside splits at the heading."""
    parts = [{"heading": "", "prose": [], "outputs": [], "code": []}]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if re.match(r"#{1,6} ", line):
                    parts.append({"heading": line, "prose": [], "outputs": [], "code": []})
                else:
                    parts[-1]["prose"].append(line)
            parts[-1]["prose"].append("")
        elif cell.cell_type == "code":
            parts[-1]["code"].append(cell.source)
            for out in cell.get("outputs", []):
                texts = [out.get("text", "")] + [v for v in out.get("data", {}).values() if isinstance(v, str)]
                parts[-1]["outputs"] += texts
    for part in parts:
        part["prose"] = "\n".join(part["prose"])
    return parts


def _numbers(texts) -> list[float]:
    values = []
    for text in texts:
        for token in SHOWN.findall(text):
            try:
                values.append(float(token.replace(",", "")))
            except ValueError:
                continue
    return values


def unshown_numbers(nb, allowed: set[str] = frozenset()) -> list[str]:
    """The numbers the notebook's Markdown quotes that no output of the same section (heading to next heading) shows,
    within the quoted rounding (0.51 matches a shown 0.5123; a percentage also matches a shown share, 26 % ~ 0.26, or
    ratio, 26 % ~ 1.26); plain integers too, except METHOD_CONSTANTS and `allowed`."""
    missing = []
    for part in sections(nb):
        shown = _numbers(part["outputs"])
        prose = NOT_QUOTES.sub(" ", part["heading"] + "\n" + part["prose"])
        for number, percent in QUOTED.findall(prose):
            if number in allowed or number in METHOD_CONSTANTS:
                continue
            value = float(number.replace(",", ""))
            decimals = len(number.partition(".")[2])
            tolerance = 0.5 * 10**-decimals * (1 + 1e-9)
            candidates = [(v, v * 100, (v - 1) * 100) if percent else (v,) for v in shown]
            if not any(abs(c - value) <= tolerance for group in candidates for c in group):
                missing.append(number + percent)
    return missing


def unshown_names(nb) -> list[str]:
    """Metric, loss-term and column names (VOCABULARY) that a section's prose names in backticks and none of its
    outputs shows: a panel the figure does not draw, a column the table does not have (sections with outputs)."""
    missing = []
    for part in sections(nb):
        if not part["outputs"]:  # prose without a table or figure (a method's description) names terms freely
            continue
        shown = "\n".join(part["outputs"])
        for name in re.findall(r"`(\w+)`", part["prose"]):
            if name in VOCABULARY and not re.search(rf"(?<!\w){name}(?!\w)", shown):
                missing.append(name)
    return missing


def unplotted_heading_metrics(nb) -> list[str]:
    """Headings that name a metric (METRICS) whose section's code never uses it."""
    wrong = []
    for part in sections(nb):
        code = "\n".join(part["code"]).lower()
        for word, tokens in METRICS.items():
            if word in part["heading"].lower() and code.strip() and not any(t in code for t in tokens):
                wrong.append(part["heading"])
    return wrong


def promised_figures(nb) -> set[str]:
    """The figures a notebook says it saves: `save_figure(fig, figures, "name")` in its code, "saved as `name`" in
    its prose."""
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return set(re.findall(r"save_figure\(.*?,\s*figures,\s*[\"']([\w.-]+)[\"']", code, re.S)) | set(
        re.findall(r"saved (?:as|into) `([\w.-]+?)(?:\.png|\.pdf)?`", prose)
    )


def missing_figures(nb, folder: Path) -> list[str]:
    """The promised figures that the run did not write into `folder` (as name.png)."""
    return sorted(name for name in promised_figures(nb) if not (Path(folder) / f"{name}.png").exists())


def _md_notebook(*cells) -> nbformat.NotebookNode:
    """A notebook from (markdown, outputs) pairs: each Markdown cell followed by a code cell printing `outputs`."""
    nb = new_notebook()
    for prose, printed in cells:
        nb.cells.append(new_markdown_cell(prose))
        code = new_code_cell("...")
        code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
        nb.cells.append(code)
    return nb


def test_unshown_numbers_finds_a_stale_quote():
    nb = new_notebook(cells=[new_markdown_cell("falls from 0.51 to 0.14, 1,115 against 26 % and 30 layers")])
    cell = new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="0.5123 1115.2 1.26 30\n")]
    nb.cells.append(cell)
    assert unshown_numbers(nb) == ["0.14"]
    assert unshown_numbers(nb, {"0.14"}) == []


OLD_07_KLPATCH = (
    "## The orders\n\n- **`klpatch`**: greedy. At each size, swap the remaining block whose member has the lowest "
    "KL(teacher ‖ member) on\n  a calibration set of 64 windows of training text.",
    "klpatch order: [[11], [10]] (52 s; 4 x 256 calibration tokens, every 1 scored, autocast None)\n",
)
"""Issue 26's quotes, as committed at 1e2244a (07's definition of klpatch beside the search's printed line)."""
OLD_09_FIGURE4 = (
    "## Figure 4: the family's curve and the students distilled at their own size\n\nWikiText-2 test token "
    "perplexity (first 4,096 tokens, bf16 autocast; log scale) and LAMBADA accuracy (64 examples, ± one stderr)",
    "182 rows · recipe quick · order last · direct-student seeds [0, 1]\n",
)
OLD_01_PANELS = (
    "## The loss curves\n\nA run with a local stage draws it first (its `local_nmse` and `local_cos`), then the "
    "global stage's\n`ce`, `kl` and `cos` (1 − cos) after the dotted line.",
    "panels: local_nmse, ce, kl, cos, lr\n",
)
OLD_04_LIMIT = (
    "## Every task against size\n\nReading it: with few examples per task (the `limit` column of the table above) "
    "the accuracy panels overlap within their bands.",
    "task lambada_openai_local wikitext_ppl\nmetric acc perplexity token_perplexity\n",
)


def test_the_guard_sees_issue_26s_old_quotes():
    """Each check, on one of the quotes issue 26 found (the old guard let all of them pass)."""
    assert unshown_numbers(_md_notebook(OLD_07_KLPATCH)) == ["64"]  # a plain integer no output shows
    assert unshown_numbers(_md_notebook(OLD_09_FIGURE4)) == ["4,096", "64"]  # 09 now covered: no output shows 4,096
    # the same section: 4,096 shown in another section's output does not count
    elsewhere = _md_notebook(OLD_09_FIGURE4, ("## Set-up", "first 4096 tokens, 64 examples\n"))
    assert unshown_numbers(elsewhere) == ["4,096", "64"]
    assert unshown_numbers(_md_notebook((OLD_09_FIGURE4[0], "4096 tokens, 64 examples\n"))) == []
    assert unshown_names(_md_notebook(OLD_01_PANELS)) == ["local_cos"]  # a panel the figure does not draw
    assert unshown_names(_md_notebook(OLD_04_LIMIT)) == ["limit"]  # a column the table does not have
    # a heading that names a metric its section never uses
    nb = _md_notebook(("## Perplexity against size", ""))
    nb.cells[1].source = "plots.size_curves(table, metric='acc')"
    assert unplotted_heading_metrics(nb) == ["## Perplexity against size"]
    nb.cells[1].source = "plots.perplexity_vs_size(table)"
    assert unplotted_heading_metrics(nb) == []
    # a figure promised in prose or code that the run did not write
    nb = _md_notebook(("The figure is saved as `perplexity_vs_size` beside the others.", ""))
    nb.cells[1].source = 'plots.save_figure(fig, figures, "size_curves")'
    assert promised_figures(nb) == {"perplexity_vs_size", "size_curves"}


def test_missing_figures_names_what_was_not_written(tmp_path):
    nb = _md_notebook(("saved as `a`", ""))
    nb.cells[1].source = 'save_figure(fig, figures, "b", formats=("png",))'
    (tmp_path / "b.png").write_bytes(b"png")
    assert missing_figures(nb, tmp_path) == ["a"]


def _guard(nb, name) -> dict:
    return {
        "numbers": unshown_numbers(nb, STRUCTURAL.get(name, set())),
        "names": unshown_names(nb),
        "headings": unplotted_heading_metrics(nb),
    }


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_prose_quotes_only_what_its_section_shows(name):
    """The committed notebook's Markdown quotes no number, names no panel or column and heads no metric that its
    section's outputs do not show (readings are rendered from the computed values, so their numbers are outputs); a
    notebook without outputs (not yet published) has none."""
    nb = _read(name)
    if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        pytest.skip(f"{name} carries no outputs yet (the smoke run checks its prose)")
    assert _guard(nb, name) == {"numbers": [], "names": [], "headings": []}


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
        assert _guard(nb, name) == {"numbers": [], "names": [], "headings": []}, name
        assert missing_figures(nb, smoke / "figures") == [], name
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
        parameters={**STUDY_NOTEBOOKS[name], **({"figures": str(tmp_path)} if "figures" in _defaults(name) else {})},
        progress_bar=False,
        kernel_manager_class=pipeline._encrypted_kernel_manager(),
    )
    assert not errors(executed)
    assert missing_figures(nbformat.read(executed, as_version=4), tmp_path) == []
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


def test_publishing_drops_log_lines_and_the_sweeps_second_table():
    """lm-eval's bootstrapping lines, the Trainer's closing dicts and the sweep's summary table (the numbers the
    notebook then shows labelled) stay out of the committed outputs; the progress lines stay."""
    from boomerang_lab.study.publish import clean

    cell = new_code_cell("sweep(...)")
    cell.outputs = [
        nbformat.v4.new_output(
            "stream", name="stdout", text="[sweep] 1/54 boomerang k=0\nbootstrapping for stddev: perplexity\n"
        ),
        nbformat.v4.new_output("stream", name="stdout", text="{'train_runtime': '96.69', 'train_loss': '5.208'}\n"),
        nbformat.v4.new_output(
            "stream",
            name="stdout",
            text="54 evaluations run, 0 found in results/quick.csv\ntask  wikitext_ppl\n323.7\n",
        ),
    ]
    nb = clean(new_notebook(cells=[cell]))
    assert [o.text for o in nb.cells[0].outputs] == [
        "[sweep] 1/54 boomerang k=0\n",
        "54 evaluations run, 0 found in results/quick.csv\n",
    ]
    assert problems(new_notebook(cells=[cell])) == [
        "log lines in the outputs ('bootstrapping for stddev: perplexity', 2 in all)"
    ]
