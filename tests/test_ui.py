"""The MLflow UI as a user sees it: headless Chromium (Debian's package) driven by Playwright.

Set MNIST_EXP_SCREENSHOTS=DIR to keep the screenshots (the README's come from here).
"""

import os
import subprocess
from pathlib import Path

import pytest

from conftest import VENV_BIN, free_port, runs, wait_http

CHROMIUM = os.environ.get("MNIST_EXP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture
def ui(swept_store):
    port = free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    log = open(swept_store / "ui.log", "w")  # a file, not a pipe: the UI logs every request
    server = subprocess.Popen([str(VENV_BIN / "mnist-exp"), "ui", "--port", str(port)], cwd=swept_store, env=env,
                              stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", server)
    yield url
    server.terminate()
    server.wait(timeout=30)
    log.close()


def test_ui_shows_sweep_with_nested_trials_metrics_and_plots(ui, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("MNIST_EXP_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    [parent] = runs(filter_string="tags.`mnist_exp.sweep` = 'a' and tags.`mnist_exp.kind` = 'sweep'")
    trial = next(r for r in runs(filter_string="tags.`mnist_exp.sweep` = 'a' and tags.`mnist_exp.kind` = 'trial'")
                 if r.data.tags["mnist_exp.trial_id"] == "0")
    exp_id = parent.info.experiment_id
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # a loaded 2-core machine renders slowly

        page.goto(f"{ui}/#/experiments/{exp_id}/runs")
        row = page.locator('[role="row"]', has=page.get_by_text("a", exact=True))
        expect(row.first).to_be_visible()
        expect(page.get_by_text("a-0", exact=True)).to_have_count(0)  # children are nested, folded
        row.first.locator('button[data-component-id*="runnamecellrenderer"]').click()
        expect(page.get_by_text("a-0", exact=True)).to_be_visible()
        expect(page.get_by_text("a-1", exact=True)).to_be_visible()
        page.screenshot(path=str(shots / "ui_sweep.png"))

        page.goto(f"{ui}/#/experiments/{exp_id}/runs/{trial.info.run_id}")
        expect(page.get_by_text("val_accuracy", exact=True).first).to_be_visible()
        expect(page.get_by_text("test_accuracy", exact=True).first).to_be_visible()
        expect(page.get_by_text("learning_rate", exact=True).first).to_be_visible()

        page.goto(f"{ui}/#/experiments/{exp_id}/runs/{trial.info.run_id}/model-metrics")
        expect(page.get_by_text("val_accuracy").first).to_be_visible()
        page.get_by_placeholder("Search metric charts").fill("val_")
        page.wait_for_timeout(2000)  # charts draw after their data arrives
        page.screenshot(path=str(shots / "ui_trial_curves.png"))

        page.goto(f"{ui}/#/experiments/{exp_id}/runs/{trial.info.run_id}/artifacts")
        page.get_by_text("plots", exact=True).click()
        for name in ("learning_curves.png", "predictions.png", "confusion_matrix.png", "mistakes.png"):
            expect(page.get_by_text(name, exact=True)).to_be_visible()
        page.get_by_text("learning_curves.png", exact=True).click()
        img = page.locator("img[src^='blob:']")  # the preview of the PNG fetched from the artifact store
        expect(img.first).to_be_visible()
        assert img.first.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [1000, 400]  # our 10x4 in figure
        page.screenshot(path=str(shots / "ui_trial_plots.png"))

        page.goto(f"{ui}/#/experiments/{exp_id}/runs/{parent.info.run_id}/artifacts")
        page.reload()  # a hash change alone keeps the previous run's artifact tree
        page.get_by_text("plots", exact=True).click()
        page.get_by_text("objective_vs_hyperparameters.png", exact=True).click()
        expect(page.locator("img[src^='blob:']").first).to_be_visible()
        page.screenshot(path=str(shots / "ui_sweep_comparison.png"))
        browser.close()
