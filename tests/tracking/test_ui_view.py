"""The MLflow UI as a user sees it: headless Chromium (Debian's package) driven by Playwright.

A person starts at the UI's home page and clicks; a second, fresh browser opens the address ``mnist-exp ui``
printed. Set MNIST_EXP_SCREENSHOTS=DIR to keep the screenshots (docs/img/ comes from here).
"""

import json
import os
import re
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest

from helpers import ROOT, VENV_BIN, free_port, job_runner_processes, runs, wait_http

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
    jobs = job_runner_processes(server.pid)  # `mnist-exp ui` execs MLflow's server in its own process
    server.terminate()
    server.wait(timeout=30)
    log.close()
    assert not jobs, jobs  # MLflow's job runner is off


def printed(output: str, label: str) -> str:
    found = re.search(rf"^  {label}[^:]*: (http://\S+)$", output, re.M)
    assert found, output[-2000:]
    return found.group(1)


def saved_view(experiment_id: str, address: str) -> dict:
    """The saved view the address opens, as the UI reads it: the experiment tag mlflow.sharedViewState.<key>
    (an envelope whose "state" is the runs page's state as a JSON string)."""
    from mlflow import MlflowClient

    [key] = parse_qs(urlsplit(address).fragment.partition("?")[2])["viewStateShareKey"]
    envelope = json.loads(MlflowClient().get_experiment(experiment_id).tags[f"mlflow.sharedViewState.{key}"])
    return {"name": envelope["name"], **json.loads(envelope["state"])}


def is_runs_search(response) -> bool:
    return response.request.method == "POST" and "/mlflow/runs/search" in response.url


def searched_runs(response) -> dict[str, dict]:
    """A runs/search answer as the UI received it: run name -> its params and metrics (latest values)."""
    assert response.ok, f"{response.status} {response.url}"
    found = {}
    for run in response.json().get("runs", []):
        data = run.get("data", {})
        found[run["info"]["run_name"]] = {**{p["key"]: p["value"] for p in data.get("params", [])},
                                          **{m["key"]: m["value"] for m in data.get("metrics", [])}}
    return found


@pytest.mark.slow
def test_ui_from_home_and_from_the_printed_address(ui, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, output = ui
    shots = ROOT / os.environ.get("MNIST_EXP_SCREENSHOTS", tmp_path)  # relative: to the checkout (cwd is the store)
    shots.mkdir(parents=True, exist_ok=True)
    [parent] = runs(filter_string="tags.`mnist_exp.sweep` = 'a' and tags.`mnist_exp.kind` = 'sweep'")
    exp_id = parent.info.experiment_id
    table_address, chart_address = printed(output, "sweeps"), printed(output, "charts")
    assert table_address.startswith(f"{url}/#/experiments/{exp_id}/runs?")

    # The chart the test looks at, as the UI reads it: the saved view's Parallel Coordinates chart. It draws one
    # axis per selectedParams and selectedMetrics entry, over the runs shown in the runs list that have all of
    # them: the trials, once their sweep is expanded (the sweeps' parent runs have no such params).
    view = saved_view(exp_id, chart_address)
    [parallel_chart] = [c for c in view["compareRunCharts"] if c["uuid"] == "mnist-exp-parallel"]
    axes = [*parallel_chart["selectedParams"], *parallel_chart["selectedMetrics"]]
    assert {"learning_rate", "filters_1", "activation"} <= set(parallel_chart["selectedParams"]), parallel_chart
    assert parallel_chart["selectedMetrics"] == ["objective"], parallel_chart
    importance = [f"importance.{p}" for p in parallel_chart["selectedParams"]]
    assert [c["selectedMetrics"] for c in view["compareRunCharts"] if c["uuid"] == "mnist-exp-importance"] == [importance]
    assert [f"metrics.`{m}`" for m in importance] == [c for c in view["selectedColumns"] if "importance." in c]
    [section] = [s["name"] for s in view["compareRunSections"] if s["uuid"] == parallel_chart["metricSectionId"]]
    [parent_b] = runs(filter_string="tags.`mnist_exp.sweep` = 'b' and tags.`mnist_exp.kind` = 'sweep'")
    trials = sorted(r.info.run_name for sweep in (parent, parent_b)
                    for r in runs(filter_string=f"tags.`mlflow.parentRunId` = '{sweep.info.run_id}'")
                    if "objective" in r.data.metrics)  # the chart's runs once sweeps a and b are expanded
    assert trials == ["a-0", "a-1", "b-0", "b-1"], trials

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

        def expect_chart_data(search):
            """The runs/search answer the page got holds what the chart draws: each trial's params and objective."""
            found = searched_runs(search.value)
            for name in trials:
                assert name in found, f"{name} not in the runs the UI searched: {sorted(found)}"
                missing = [a for a in axes if a not in found[name]]
                assert not missing, f"{name}: the UI's runs/search answer has no {missing}"

        def expect_saved_view_charts(page):
            """In the chart view, wait until the saved view is applied: its section is shown. MLflow applies a saved
            view by replacing the page's state, which folds every expanded row (runsExpanded is not shared), and it
            may fetch the experiment first: rows expanded before that are folded again and the charts lose their
            runs (the view hides empty charts), which is how this test once waited 60 s for an axis."""
            expect(page.get_by_text(section, exact=True).first).to_be_visible()  # not in MLflow's default charts

        def expand_sweep(page, name):
            row = page.locator('[role="row"]', has=page.get_by_role("link", name=name, exact=True))
            row.first.locator('button[data-component-id*="runnamecellrenderer"]').click()
            expect(page.get_by_role("link", name=f"{name}-0", exact=True)).to_be_visible()

        def expect_sweep_chart(page):
            """Expand both sweeps; once their trials, the chart's data, are rows of the runs list, the Parallel
            Coordinates chart shows (the view hides it while it has no runs) and draws an axis per hyperparameter."""
            expand_sweep(page, "a")
            expand_sweep(page, "b")
            for name in trials:
                expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
            parallel = page.get_by_test_id("experiment-view-compare-runs-card").filter(has_text="Parallel Coordinates")
            expect(parallel).to_be_visible()
            for axis in axes:  # drawn after a 300-ms resize debounce and a lazily loaded chunk: retried
                expect(parallel.locator("svg text", has_text=re.compile(rf"^{re.escape(axis)}$")).first).to_be_visible()

        # The address mnist-exp ui printed, in a browser that never chose a mode: the runs table, no clicks.
        page = fresh_page()
        page.goto(table_address)
        expect_model_training_runs_table(page)
        expect(page.get_by_role("link", name="a-0", exact=True)).to_have_count(0)  # trials nested, folded
        # the folded sweep's own row shows its result (its best trial's objective and test accuracy), not dashes;
        # the grid draws a row's pinned name and its other cells as two [role=row] elements with one row-index
        name_row = page.locator('[role="row"]', has=page.get_by_role("link", name="a", exact=True)).first
        index = name_row.get_attribute("row-index")
        for column in ("metrics.`objective`", "metrics.`test_accuracy`"):
            cell = page.locator(f'[role="row"][row-index="{index}"] [col-id="{column}"]').first
            expect(cell).to_have_text(re.compile(r"^\s*0?\.\d|^\s*1(\.0*)?\s*$"))  # a value in [0, 1], not "-"
        page.goto("about:blank")  # a load, not a hash change (which keeps the table); not a reload either: the
        # URL then holds the view's filters, and MLflow applies a saved view only without them
        with page.expect_response(is_runs_search) as search:  # the page's search for runs: the chart's data
            page.goto(chart_address)
        expect_chart_data(search)
        expect_saved_view_charts(page)
        # on arrival, before any row is expanded, the sweeps' own results are charted (the section is not empty):
        # the bar chart of the objective, titled by its metric
        bar = page.get_by_test_id("experiment-view-compare-runs-card").filter(
            has=page.get_by_role("heading", name="objective", exact=True))
        expect(bar.first).to_be_visible()
        expect_sweep_chart(page)
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
        page.get_by_text(view["name"], exact=True).click()
        expect_model_training_runs_table(page)  # the view's columns: the view is applied, expanding is safe
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
        # saved view's columns in MLflow 3.17, so a person opens the view again from "Views".) Picked from the
        # menu, the view is applied only after MLflow fetched the experiment again (its experiments/get): until
        # then the table is the default one, and sweeps expanded then are folded again when the view lands.
        page.get_by_role("link", name="Runs", exact=True).first.click()  # the sidebar's
        page.get_by_test_id("saved-views-trigger").click()
        page.get_by_text(view["name"], exact=True).click()
        expect_model_training_runs_table(page)  # the view's columns (not there before): the view is applied
        page.locator("label", has=page.locator("input[value=CHART]")).click()
        expect_saved_view_charts(page)
        expect_sweep_chart(page)
        browser.close()
