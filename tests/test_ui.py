"""The MLflow UI as a user sees it: headless Chromium (Debian's package) driven by Playwright.

A person starts at the UI's home page and clicks; a second, fresh browser opens the address ``mnist-exp ui``
printed. Set MNIST_EXP_SCREENSHOTS=DIR to keep the screenshots (the README's come from here).
"""

import os
import re
import subprocess

import pytest

from conftest import ROOT, VENV_BIN, free_port, runs, wait_http

CHROMIUM = os.environ.get("MNIST_EXP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
# The MLflow Assistant opens itself once per browser on 127.0.0.1 and takes a third of the width; this is the
# flag it sets when it has (MLflow 3.17: useLocalStorage key "mlflow.assistant.fab.autoOpenedOnFirstLoad", v1).
NO_ASSISTANT = "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"
GENAI_ONLY = ("Evaluation runs", "Training runs", "Observability")  # the GenAI mode's sidebar

pytestmark = pytest.mark.browser


@pytest.fixture
def ui(swept_store):
    port = free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    log_path = swept_store / "ui.log"
    log = open(log_path, "w")  # a file, not a pipe: the UI logs every request
    server = subprocess.Popen([str(VENV_BIN / "mnist-exp"), "ui", "--port", str(port)], cwd=swept_store, env=env,
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", server)
    yield url, log_path.read_text()
    server.terminate()
    server.wait(timeout=30)
    log.close()


def printed(output: str, label: str) -> str:
    found = re.search(rf"^  {label}[^:]*: (http://\S+)$", output, re.M)
    assert found, output[-2000:]
    return found.group(1)


def test_ui_from_home_and_from_the_printed_address(ui, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, output = ui
    shots = ROOT / os.environ.get("MNIST_EXP_SCREENSHOTS", tmp_path)  # relative: to the checkout (cwd is the store)
    shots.mkdir(parents=True, exist_ok=True)
    [parent] = runs(filter_string="tags.`mnist_exp.sweep` = 'a' and tags.`mnist_exp.kind` = 'sweep'")
    exp_id = parent.info.experiment_id
    table_address, chart_address = printed(output, "sweeps"), printed(output, "charts")
    assert table_address.startswith(f"{url}/#/experiments/{exp_id}/runs?")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        expect.set_options(timeout=60_000)  # a loaded 2-core machine renders slowly

        def fresh_page():
            context = browser.new_context(viewport={"width": 1400, "height": 820})
            context.add_init_script(NO_ASSISTANT)
            page = context.new_page()
            page.set_default_timeout(60_000)
            return page

        def expect_model_training_runs_table(page):
            expect(page.get_by_role("link", name="Runs", exact=True).first).to_be_visible()
            for text in GENAI_ONLY:
                expect(page.get_by_text(text, exact=True)).to_have_count(0)
            expect(page.get_by_role("columnheader", name="Duration", exact=True).first).to_be_visible()
            for column in ("metrics.`objective`", "metrics.`test_accuracy`", "metrics.`epochs_run`",
                           "params.`learning_rate`", "params.`filters_1`", "params.`activation`"):  # the table's column ids
                expect(page.locator(f'[role="columnheader"][col-id="{column}"]')).to_be_visible()

        def expand_sweep(page, name):
            row = page.locator('[role="row"]', has=page.get_by_role("link", name=name, exact=True))
            row.first.locator('button[data-component-id*="runnamecellrenderer"]').click()
            expect(page.get_by_role("link", name=f"{name}-0", exact=True)).to_be_visible()

        # The address mnist-exp ui printed, in a browser that never chose a mode: the runs table, no clicks.
        page = fresh_page()
        page.goto(table_address)
        expect_model_training_runs_table(page)
        expect(page.get_by_role("link", name="a-0", exact=True)).to_have_count(0)  # trials nested, folded
        page.goto("about:blank")  # a load, not a hash change (which keeps the table); not a reload either: the
        page.goto(chart_address)  # URL then holds the view's filters, and MLflow applies a saved view only without them
        expand_sweep(page, "a")
        expand_sweep(page, "b")
        parallel = page.get_by_test_id("experiment-view-compare-runs-card").filter(has_text="Parallel Coordinates")
        expect(parallel.locator("svg text", has_text="learning_rate").first).to_be_visible()  # an axis per hyperparameter
        expect(parallel.locator("svg text", has_text="objective").first).to_be_visible()
        expect(page.get_by_test_id("experiment-view-compare-runs-card").filter(has_text="val_accuracy")).to_be_visible()
        page.wait_for_timeout(1500)  # plotly's lines draw after the axes
        page.screenshot(path=str(shots / "ui_sweep_charts.png"))
        page.context.close()

        # A person at the home page: switch to model training once (the browser remembers), then click through.
        page = fresh_page()
        page.goto(f"{url}/")
        page.get_by_text("Model training", exact=True).click()
        page.get_by_role("link", name="Experiments", exact=True).first.click()
        page.get_by_role("link", name="mnist-exp", exact=True).first.click()
        expect(page).to_have_url(re.compile(rf"#/experiments/{exp_id}/runs\?.*workflowType=machine_learning"))
        page.get_by_test_id("saved-views-trigger").click()
        page.get_by_text("mnist-exp sweeps", exact=True).click()
        expect_model_training_runs_table(page)
        page.get_by_role("button", name="Hide banner").click()  # "You're viewing a shared view"
        expand_sweep(page, "a")
        expect(page.get_by_role("link", name="a-1", exact=True)).to_be_visible()
        page.screenshot(path=str(shots / "ui_sweep.png"))

        page.get_by_role("link", name="a-0", exact=True).click()
        expect(page.get_by_text("val_accuracy", exact=True).first).to_be_visible()
        expect(page.get_by_text("test_accuracy", exact=True).first).to_be_visible()
        expect(page.get_by_text("learning_rate", exact=True).first).to_be_visible()
        page.get_by_role("tab", name="Model metrics").click()
        page.get_by_placeholder("Search metric charts").fill("val_")
        expect(page.get_by_test_id("experiment-view-compare-runs-card").first).to_be_visible()
        page.wait_for_timeout(1500)  # charts draw after their data arrives
        page.screenshot(path=str(shots / "ui_trial_curves.png"))

        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text("plots", exact=True).click()
        for name in ("learning_curves.png", "predictions.png", "confusion_matrix.png", "mistakes.png"):
            expect(page.get_by_text(name, exact=True)).to_be_visible()
        page.get_by_text("predictions.png", exact=True).click()
        img = page.locator("img[src^='blob:']")  # the preview of the PNG fetched from the artifact store
        expect(img.first).to_be_visible()
        assert img.first.evaluate("i => i.naturalWidth") > 300
        page.screenshot(path=str(shots / "ui_trial_plots.png"))

        # Back to the sweeps, and their chart view. (Back in the browser's history restores the URL but not the
        # saved view's columns in MLflow 3.17, so a person opens the view again from "Views".)
        page.get_by_role("link", name="Runs", exact=True).first.click()  # the sidebar's
        page.get_by_test_id("saved-views-trigger").click()
        page.get_by_text("mnist-exp sweeps", exact=True).click()
        page.locator("label", has=page.locator("input[value=CHART]")).click()
        expand_sweep(page, "a")
        expand_sweep(page, "b")
        parallel = page.get_by_test_id("experiment-view-compare-runs-card").filter(has_text="Parallel Coordinates")
        # learning_rate: a hyperparameter that varies within each sweep (CI once drew no filters_1 axis here, with
        # only sweep a expanded, whose two trials share filters_1)
        expect(parallel.locator("svg text", has_text="learning_rate").first).to_be_visible()
        expect(parallel.locator("svg text", has_text="objective").first).to_be_visible()
        browser.close()
