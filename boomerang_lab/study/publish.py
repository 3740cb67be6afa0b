"""The committed notebooks carry the main job's outputs: an executed notebook, cleaned, written over its source.

Cleaning keeps what a reader on GitHub should see (code, markdown, figures, tables, printed text) and drops what
belongs to one machine or one run: widgets (progress bars are dropped; a widget that is a cell's value, the
explorer, becomes a note), papermill's injected-parameters cell (the source's own parameters cell stays, so a
rerun in JupyterLab uses the notebook's defaults), papermill's and the widgets' metadata, stderr streams (progress
bars, warnings), log lines that are no result (`LOG_LINES`: lm-eval's "bootstrapping for stddev", the Trainer's
end-of-training dicts; the sweep's closing summary table, which the notebook shows labelled right after), and absolute
paths of this checkout and of the home directory in printed text.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from ..store.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file: boomerang_lab/study/)
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "(an interactive widget: open the notebook in JupyterLab, `make lab`, to use it)"
TEMP = re.compile(r"/tmp/[^\s'\"<>]*")
ADDRESS = re.compile(r" at 0x[0-9a-f]+>")  # object reprs: <pandas...Styler at 0x7f...>
LOG_LINES = re.compile(r"^(bootstrapping for stddev\b.*|\{'train_runtime': .*\})$")
"""Printed lines that are logs, not results: dropped from the committed outputs."""
SWEEP_DONE = re.compile(r"^\d+ evaluations run, \d+ found in ")
"""The sweep's closing line: kept, and the summary table it prints after it (the same numbers the notebook shows
labelled, a second printing) dropped."""
MAX_BYTES = 3_000_000
"""A published notebook larger than this is refused (figures should be modest PNGs)."""


def clean(nb: nbformat.NotebookNode, root: Path = ROOT) -> nbformat.NotebookNode:
    """The executed notebook `nb` made fit to commit (see the module's docstring); returns a new notebook."""
    nb = nbformat.from_dict(nb)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        outputs, summary = [], False
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                continue
            if output.output_type == "stream":
                kept = []
                for line in output.text.splitlines(keepends=True):
                    if summary or LOG_LINES.match(line.rstrip("\n")):
                        continue
                    kept.append(line)
                    summary = bool(SWEEP_DONE.match(line))
                output.text = "".join(kept)
                if not output.text:
                    continue
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                if output.output_type != "execute_result":  # progress bars and other displayed widgets
                    continue
                data.pop(WIDGET_VIEW)  # the cell's value is a widget (the explorer): say where it works
                data["text/plain"] = WIDGET_NOTE
            outputs.append(output)
        cell.outputs = outputs
    return nbformat.from_dict(_scrub(nb, root))


def _scrub(node, root: Path):
    """Absolute paths of the checkout (-> relative to it), the home directory (-> ~) and temporary folders, in text."""
    if isinstance(node, dict):
        return {k: _scrub(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_scrub(v, root) for v in node]
    if isinstance(node, str):
        node = node.replace(f"{root}/", "").replace(str(root), ".")
        home = str(Path.home())
        if home != "/":
            node = node.replace(home, "~")
        return ADDRESS.sub(">", TEMP.sub("<tmp>", node))
    return node


def problems(nb: nbformat.NotebookNode, root: Path = ROOT) -> list[str]:
    """Why a notebook is not fit to commit (empty when it is): the checks `clean` should have made true."""
    text = nbformat.writes(nb)
    found = []
    if len(text.encode()) > MAX_BYTES:
        found.append(f"{len(text.encode()):,} bytes (more than {MAX_BYTES:,})")
    for needle, what in (
        (str(root), "an absolute path of the checkout"),
        ("/tmp/", "a temporary path"),
        (WIDGET_VIEW, "widget views"),
        ('"injected-parameters"', "papermill's injected parameters"),
    ):
        if needle in text:
            found.append(f"contains {what} ({needle})")
    if "widgets" in nb.metadata or "papermill" in nb.metadata:
        found.append("carries widget or papermill metadata")
    errors = [
        f"{o.ename}: {o.evalue}"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    found += [f"an error output ({e})" for e in errors]
    logs = [
        line
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream"
        for line in o.text.splitlines()
        if LOG_LINES.match(line)
    ]
    if logs:
        found.append(f"log lines in the outputs ({logs[0]!r}, {len(logs)} in all)")
    return found


def publish(executed: str | Path, target: str | Path, root: Path = ROOT) -> Path:
    """Write the cleaned copy of the executed notebook `executed` over `target` (atomically); refuse one that is
    still not fit to commit (ValueError naming why)."""
    nb = clean(nbformat.read(str(executed), as_version=4), root)
    found = problems(nb, root)
    if found:
        raise ValueError(f"Not publishing {executed} over {target}: {'; '.join(found)}.")
    atomic_write_text(target, nbformat.writes(nb))
    return Path(target)
