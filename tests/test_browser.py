"""The explorer in a real JupyterLab in a real browser: notebooks/05_explore.ipynb opened in headless Chromium
(Playwright driving Debian's `chromium`), all cells run on the smoke family, the slider moved, Generate clicked.

Environment:
- BOOMERANG_EXPLORER_SCREENSHOT=figures/explorer.png also copies the explorer's screenshot there (the README's).
- BOOMERANG_EXPLORER_PARAMS='{"teacher": ..., "student": ..., "results": ...}' opens the explorer on another family
  (e.g. the main job's: {"student": "outputs/quick/student", "results": "results/quick.csv"}) instead of building
  the smoke one.
Skipped, with the reason, only when Chromium or Playwright is missing outside CI (`CI` unset); `.ci/run` installs both.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from boomerang_lab import LayerPlan, init_student, load_model
from boomerang_lab.evaluate import SweepConfig, sweep
from boomerang_lab.models.adapters import layers_of
from boomerang_lab.models.loading import TINY
from boomerang_lab.study.pipeline import NOTEBOOK_DIR, ROOT
from tiny import perturb

CHROMIUM = os.environ.get("BOOMERANG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
NOTEBOOK = "05_explore.ipynb"
TIMEOUT_MS = 240_000  # running every cell: the kernel's start, loading the models, the speed measurements


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -c constraints.txt -e '.[dev]')"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run installs it)"
    return None


if _missing() and not os.environ.get("CI"):
    pytest.skip(f"browser test skipped: {_missing()}", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def parameters(tmp_path_factory) -> dict:
    """The explorer's inputs: the smoke family (a student directory as `distill` writes one, from the tiny random
    teacher, its weights moved as a stand-in for distillation; the results of a real perplexity sweep), or the env's."""
    if os.environ.get("BOOMERANG_EXPLORER_PARAMS"):
        given = json.loads(os.environ["BOOMERANG_EXPLORER_PARAMS"])
        return {k: str((ROOT / v).resolve()) if k in ("student", "results") else v for k, v in given.items()}
    out = tmp_path_factory.mktemp("smoke")
    teacher, tokenizer = load_model(TINY)
    plan = LayerPlan.paper(len(layers_of(teacher)))
    student = perturb(init_student(teacher, plan))
    student.save_pretrained(out / "student")
    tokenizer.save_pretrained(out / "student")
    plan.save(out / "student")
    sweep(
        teacher,
        tokenizer,
        student,
        plan,
        SweepConfig(
            profile="smoke",
            tasks=["wikitext_ppl"],
            progress=False,
            methods=["boomerang", "naive", "shortgpt"],
            results=out / "results.csv",
        ),
    )
    return {"teacher": TINY, "student": str(out / "student"), "results": str(out / "results.csv")}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, parameters):
    """JupyterLab on 127.0.0.1 (a free port, a random token) serving a folder with notebooks/05_explore.ipynb, its
    parameters injected as papermill does; stopped (with its kernels) at the end, whatever happened."""
    root = tmp_path_factory.mktemp("lab")
    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOK_DIR / NOTEBOOK)), parameters)
    for cell in nb.cells:  # the committed notebook carries the main job's outputs: the page must show only this run's
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, root / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(root / ".config"),
        "JUPYTER_DATA_DIR": str(root / ".data"),
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    settings = root / ".config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    # What the "Select Kernel" dialog's "Always start the preferred kernel" box sets: no dialog, the notebook's kernel.
    tracker = settings.parent / "notebook-extension"
    tracker.mkdir()
    (tracker / "tracker.jupyterlab-settings").write_text('{"autoStartDefaultKernel": true}')
    log = open(root / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],  # CI runs .ci/run as root
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(root / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        _start_kernel(url, token)
        yield {"url": url, "token": token, "root": root}
    finally:
        try:  # shut the kernels and the server down cleanly first
            urllib.request.urlopen(
                urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST"), timeout=10
            )
            server.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def _start_kernel(url: str, token: str) -> None:
    """The notebook's session and kernel, started through the REST API before the page opens.

    Left to the page, JupyterLab starts the kernel while it polls /api/kernels; on a fresh clone jupyter_server
    answered one poll with a 500 (a kernel being started has no `last_activity` yet), the page started a second
    kernel and then asked "Select Kernel" again after every answer, so Run All never ran. The page now finds the
    session ready and attaches to it.
    """
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}
    body = {"path": NOTEBOOK, "name": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"}}
    request = urllib.request.Request(f"{url}/api/sessions", json.dumps(body).encode(), headers, method="POST")
    kernel = json.load(urllib.request.urlopen(request, timeout=60))["kernel"]["id"]  # returns once it started
    listed = json.load(urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels", None, headers)))
    assert [k["id"] for k in listed] == [kernel], listed  # (its status stays "starting" until the page connects)


def _shot(locator) -> bytes:
    return locator.screenshot(animations="disabled")


def test_explorer_in_jupyterlab_in_chromium(lab, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    started = time.perf_counter()
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{lab['url']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first).to_be_attached()

            # The kernel was started before the page opened (_start_kernel). Should JupyterLab still ask for one
            # ("Select Kernel"), accept the dialog, and run all cells again if the explorer has not appeared.
            select = page.get_by_role("button", name="Select Kernel")
            page.add_locator_handler(select, lambda: select.click())
            explorer = page.locator(".boomerang-explorer")
            for attempt in range(2):
                page.locator(".lm-MenuBar-item", has_text="Run").first.click()  # Run > Run All Cells
                page.locator(".lm-Menu-item:visible", has_text="Run All Cells").first.click()
                try:
                    explorer.wait_for(state="visible", timeout=TIMEOUT_MS // 2)
                    break
                except PlaywrightTimeout:
                    if attempt:
                        raise
            expect(explorer).to_be_visible()
            # the deploy reading: every cell that sets the slider runs before it
            deployed = page.locator(".jp-OutputArea-output", has_text=re.compile(r"as a \w+ GGUF|Not run here"))
            expect(deployed).to_be_visible()
            expect(page.locator(".jp-OutputArea-output", has_text="ms/token -> k =")).to_be_visible()
            info, marker, plot = (explorer.locator(f".explorer-{n}") for n in ("info", "marker", "plot"))
            text, beside = explorer.locator(".explorer-text"), explorer.locator(".explorer-compare-text")
            picked = page.locator(".jp-OutputArea-output", has_text="ms/token -> k =").inner_text()
            k = int(re.search(r"ms/token -> k = (\d+)", picked).group(1))  # the size the budget cell picked
            expect(info).to_contain_text(re.compile(rf"k = {k} of \d+"))  # the budget cell set the slider there
            if "Not run here" not in deployed.text_content():  # the deploy cell exported the size the slider shows
                assert f"Member k = {k} (" in deployed.text_content()
            explorer.scroll_into_view_if_needed()  # cells far off screen are not laid out (their innerText is empty)
            K = int(re.search(r"k = \d+ of (\d+)", info.text_content()).group(1))
            if k == K // 2:  # the notebook generated at the middle size; the budget's size is the same one
                expect(text).to_contain_text(f"k = {k} ·")
            else:  # another size: moving the slider there cleared the middle size's text
                expect(text).to_have_text("")
            expect(explorer.locator(".explorer-speed")).to_contain_text("ms/token")
            before = {
                "info": info.text_content(),
                "marker": marker.text_content(),
                "plot": _shot(plot),
                "text": text.text_content(),
            }
            assert f"marked: k = {k}," in before["marker"]

            if k < K:  # move the size slider one step right (at k = K, the teacher, there is no step right)
                handle = explorer.locator(".explorer-size .noUi-handle")
                handle.focus()
                handle.press("ArrowRight")
                k += 1
                expect(info).to_contain_text(f"k = {k} of {K}")
                expect(marker).to_contain_text(f"marked: k = {k},")
                expect(text).to_have_text("")  # a new size clears its old text
                page.wait_for_timeout(500)  # the new PNG is decoded and painted
                after_move = _shot(plot)
                assert after_move != before["plot"], "the marked point did not move with the slider"
                assert info.text_content() != before["info"] and marker.text_content() != before["marker"]

            explorer.locator(".explorer-generate").click()
            expect(text).to_contain_text(f"k = {k} ·")
            generated = text.text_content()
            assert generated != before["text"] and len(generated.split("Once upon a time", 1)[-1].strip()) > 0
            expect(beside).to_contain_text(f"k = {K} ·")  # the teacher, side by side

            page.wait_for_timeout(300)
            shot = tmp_path / "explorer.png"
            explorer.screenshot(path=str(shot), animations="disabled")
            page.screenshot(path=str(tmp_path / "jupyterlab.png"))
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            print(f"\nthe page at the failure: {tmp_path / 'failure.png'}")
            raise
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"\nbrowser part: {time.perf_counter() - started:.0f} s; screenshot {shot}")
    if os.environ.get("BOOMERANG_EXPLORER_SCREENSHOT"):
        target = ROOT / os.environ["BOOMERANG_EXPLORER_SCREENSHOT"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
