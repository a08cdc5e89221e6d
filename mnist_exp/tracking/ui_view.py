"""The MLflow UI's view of the sweeps: the address ``mnist-exp ui`` prints, and the saved view it opens.

What MLflow 3.17's UI reads (from its own bundle, checked in headless Chromium by tests/tracking/test_ui_view.py):

- ``?workflowType=machine_learning`` opens an experiment in model-training mode (runs table, charts);
  without it the UI uses the browser's last choice, GenAI ("Overview", traces) at first. The experiment
  tag ``mlflow.experimentKind`` no longer decides this in 3.17 (the UI derives the kind from the
  workflow type); we set it anyway, as the UI's own kind selector would.
- A *saved view* is the experiment tag ``mlflow.sharedViewState.<key>`` holding
  ``{"name", "createdAt", "updatedAt", "state"}``, ``state`` a JSON string of the runs page's state
  (columns, sort, charts). ``?viewStateShareKey=<key>`` applies it; the "Views" menu lists it.
  ``&compareRunsMode=CHART`` opens the chart view instead of the table.
- Not shareable: which parent rows are expanded (the UI drops ``runsExpanded`` from a shared state).

A view the user has overridden in the UI (MLflow then rewrites the tag without our marker) is left alone.
"""

from __future__ import annotations

import json
import sys
import time
from urllib.parse import urlencode

from mnist_exp.tracking import keys, mlflow_io, runs

VIEW_KEY = "mnist-exp-sweeps"  # the saved view's id: mlflow.sharedViewState.<VIEW_KEY>
VIEW_NAME = "mnist-exp sweeps"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
EXPERIMENT_KIND = "custom_model_development"  # the experiment kind that opens the UI in its machine-learning mode
MARK = "mnist-exp"  # our envelope's "writtenBy": a view without it was saved by a person, not by us
COLUMN_METRICS = ("objective", "test_accuracy", "epochs_run")
SECTION = "mnist-exp-sweep-section"
MAX_TAG = 20_000  # MLflow's limit on an experiment tag value


def searched_from(hyperparameters) -> list[str]:
    """Names a Keras Tuner HyperParameters object searches: every one but the Fixed (and Hyperband's tuner/*)."""
    return [hp.name for hp in hyperparameters.space if type(hp).__name__ != "Fixed" and "/" not in hp.name]


def col(kind: str, name: str) -> str:
    """A runs-table column id as the UI writes it: metrics.`objective`, params.`learning_rate`."""
    return f"{kind}.`{name}`"


def view_state(hyperparameters: list[str]) -> dict:
    """The runs page state: the table's columns and the chart view's charts."""
    columns = [col("metrics", m) for m in COLUMN_METRICS] + [col("tags", keys.TAG_PRUNED), col("attributes", "Duration")]
    columns += [col("params", p) for p in hyperparameters]
    importance = [f"{keys.METRIC_IMPORTANCE_PREFIX}{p}" for p in hyperparameters]  # on the sweeps' own rows
    columns += [col("metrics", m) for m in importance]

    def chart(uuid: str, kind: str, title: str, **config) -> dict:
        return {"uuid": uuid, "type": kind, "displayName": title, "metricSectionId": SECTION, "deleted": False,
                "isGenerated": False, "runsCountToCompare": 500, **config}

    charts = [
        chart("mnist-exp-parallel", "PARALLEL", "Hyperparameters → objective", selectedParams=list(hyperparameters),
              selectedMetrics=["objective"], showAllRuns=True),
        chart("mnist-exp-objective", "BAR", "objective per trial", metricKey="objective"),
        chart("mnist-exp-importance", "PARALLEL", "Hyperparameter importance (a sweep of 8+ trials)",
              selectedParams=[], selectedMetrics=importance, showAllRuns=True),
        chart("mnist-exp-val-accuracy", "LINE", "val_accuracy of every trial", metricKey="val_accuracy",
              selectedMetricKeys=["val_accuracy"], xAxisKey="step", selectedXAxisMetricKey="", lineSmoothness=0,
              scaleType="linear", xAxisScaleType="linear", yAxisKey="metric", yAxisExpressions=[], ignoreOutliers=False,
              useGlobalXaxisKey=False, useGlobalLineSmoothing=False,
              range={"xMin": None, "xMax": None, "yMin": None, "yMax": None}),
    ]
    return {
        "selectedColumns": columns,
        "runsHiddenMode": "SHOW_ALL",  # the default hides all but the first 10 rows from the charts
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": SECTION, "name": "Sweep comparison", "display": True, "isReordered": False,
                                "deleted": False, "isGenerated": False}],
        "isAccordionReordered": False,
        "hideEmptyCharts": True,
    }


def address(base: str, experiment_id: str, charts: bool = False) -> str:
    """The runs table (or chart view) of the experiment, in model-training mode, with the saved view."""
    query = {"workflowType": "machine_learning", "viewStateShareKey": VIEW_KEY}
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urlencode(query)}"


def hyperparameters(experiment_id: str, client) -> list[str]:
    """Every searched hyperparameter of the experiment's current sweeps, in the order first seen. A sweep
    made before the tag existed: the params its trials do not all share (its search space, seen from runs)."""
    parents = mlflow_io.find_runs([experiment_id], f"tags.`{keys.TAG_KIND}` = 'sweep'")
    names: list[str] = []
    for parent in sorted(parents, key=lambda r: r.info.start_time or 0):
        if parent.data.tags.get(keys.TAG_SUPERSEDED):
            continue
        tagged = parent.data.tags.get(keys.TAG_SEARCHED)
        found = tagged.split(",") if tagged is not None else _varying(runs.trial_runs(experiment_id, parent.info.run_id))
        names += [n for n in found if n and n not in names]
    return names


def _varying(trials) -> list[str]:
    """Trial params with more than one value: data.*, training.* and Hyperband's tuner/* are settings."""
    values: dict[str, set] = {}
    for run in trials:
        for k, v in run.data.params.items():
            values.setdefault(k, set()).add(v)
    return [k for k, v in values.items() if len(v) > 1 and "." not in k and "/" not in k and k != "seed"]


def publish(experiment_id: str, parent_run_id: str | None = None, searched: list[str] | None = None) -> str:
    """Tag the sweep's parent with its searched hyperparameters (when given), then (re)write the experiment's
    kind and saved view from every current sweep. Returns the view's key."""
    client = mlflow_io.client()
    if parent_run_id and searched is not None:
        mlflow_io.set_tags({keys.TAG_SEARCHED: ",".join(searched)}, run_id=parent_run_id)
    exp = client.get_experiment(experiment_id)
    client.set_experiment_tag(experiment_id, keys.TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    old = exp.tags.get(VIEW_TAG)
    created = now = int(time.time() * 1000)
    if old is not None:
        try:
            prior = json.loads(old)
        except ValueError:
            prior = {}
        if prior.get("writtenBy") != MARK:
            return VIEW_KEY  # saved over in the UI by a person: theirs now
        created = prior.get("createdAt", now)
    state = json.dumps(view_state(hyperparameters(experiment_id, client)), separators=(",", ":"))
    envelope = json.dumps({"name": VIEW_NAME, "createdAt": created, "updatedAt": now, "state": state, "writtenBy": MARK},
                          separators=(",", ":"))
    if len(envelope) > MAX_TAG:
        raise ValueError(f"the saved view is {len(envelope)} characters, over MLflow's {MAX_TAG}")
    client.set_experiment_tag(experiment_id, VIEW_TAG, envelope)
    return VIEW_KEY


def after_sweep(sw, hyperparameters_obj) -> None:
    """sweep.py's hook: refresh the saved view with this sweep. Never fails the sweep: one warning line."""
    try:
        publish(sw.experiment_id, sw.parent_run_id, searched_from(hyperparameters_obj))
    except Exception as e:
        print(f"sweep {sw.exp.name}: warning: MLflow UI view not saved ({type(e).__name__}: {e})"[:300], flush=True)


def for_ui(uri: str, base: str, experiment: str = "mnist-exp") -> tuple[str, str | None]:
    """``mnist-exp ui``: (re)write the saved view (a store made by an older release has none) and return the
    addresses of the runs table and of the chart view; the UI's home page when the experiment is not there.
    A view that cannot be written (a read-only store) is a warning: the address still lands on the runs."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return f"{base}/", None
    try:
        publish(exp.experiment_id)
    except Exception as e:
        print(f"mnist-exp ui: warning: saved view not written ({type(e).__name__}: {e})"[:300], file=sys.stderr)
    return address(base, exp.experiment_id), address(base, exp.experiment_id, charts=True)


def can_open_browser() -> bool:
    """A person at a terminal with a display: never in CI, tests or a pipe."""
    import os

    if not sys.stdout.isatty() or os.environ.get("CI") or os.environ.get("PYTEST_CURRENT_TEST"):
        return False
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_when_up(url: str, health: str) -> None:
    """Open ``url`` in the user's browser once ``health`` answers (the server starts after this process
    execs it): a detached helper process, so nothing waits here."""
    import subprocess

    subprocess.Popen([sys.executable, "-m", __name__, url, health], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_and_open(url: str, health: str, timeout: float = 120) -> None:
    import urllib.request
    import webbrowser

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(health, timeout=2)
            webbrowser.open(url)
            return
        except OSError:
            time.sleep(0.5)


if __name__ == "__main__":
    _wait_and_open(sys.argv[1], sys.argv[2])
