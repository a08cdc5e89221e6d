"""Reading runs for leaderboards, liveness and promotion: ``SqliteRuns`` straight from a local sqlite store
(read-only, without importing MLflow), ``MLflowRuns`` through MLflow for any other store; ``run_reader``
picks one. Both give the same ``StoredRun`` records (tests/results/test_compare.py checks it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mnist_exp.tracking import mlflow_io, store

# MLflow schema revisions whose tables SqliteRuns reads directly. tests/results/test_compare.py checks that the
# installed MLflow writes one of these and that both readers give the same leaderboard; a store
# migrated by another MLflow falls back to MLflowRuns.
KNOWN_SCHEMA_REVISIONS = {"dc11669786a5"}  # MLflow 3.17


@dataclass(frozen=True)
class StoredRunInfo:
    run_id: str
    status: str
    start_time: int | None
    end_time: int | None


@dataclass(frozen=True)
class StoredRunData:
    params: dict
    metrics: dict
    tags: dict


@dataclass(frozen=True)
class StoredRun:
    """The parts of an MLflow ``Run`` a leaderboard reads (``run.info.status``, ``run.data.tags`` …)."""

    info: StoredRunInfo
    data: StoredRunData


class MLflowRuns:
    """Runs through MLflow's client: any tracking URI."""

    def __init__(self, uri: str | None = None):
        """``uri``: None keeps MLflow's current tracking URI."""
        if uri:
            import mlflow

            mlflow.set_tracking_uri(uri)

    def experiment_id(self, name: str) -> str | None:
        import mlflow

        exp = mlflow.get_experiment_by_name(name)
        return exp.experiment_id if exp else None

    def runs(self, experiment_id: str | None, tags: dict[str, str], status: str | None = None) -> list:
        """Active runs whose tags equal ``tags`` (and whose status is ``status``), in one experiment or all."""
        where = [f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ([f"attributes.status = '{status}'"] if status else [])
        ids = [experiment_id] if experiment_id is not None else [e.experiment_id for e in mlflow_io.client().search_experiments()]
        return mlflow_io.find_runs(ids, " and ".join(where)) if ids else []


class SqliteRuns:
    """Runs read straight from a local MLflow sqlite store, read-only and without importing MLflow:
    importing MLflow and opening its store is most of what ``compare`` would spend."""

    def __init__(self, path: Path):
        import sqlite3

        self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=20)

    @classmethod
    def open(cls, uri: str) -> SqliteRuns | None:
        """None unless ``uri`` is a sqlite store at a schema revision we know."""
        if cls.revision(uri) not in KNOWN_SCHEMA_REVISIONS:  # None too: no store, or not yet migrated
            return None
        return cls(store.sqlite_path(uri))

    @classmethod
    def revision(cls, uri: str) -> str | None:
        """The schema revision of a local sqlite store (None: not one, or none readable)."""
        path = store.sqlite_path(uri)
        if path is None or not path.is_file():
            return None
        try:
            reader = cls(path)
        except Exception:
            return None
        try:
            row = reader.db.execute("select version_num from alembic_version").fetchone()
        except Exception:
            row = None
        finally:
            reader.close()
        return str(row[0]) if row else None

    def close(self) -> None:
        self.db.close()

    def experiment_id(self, name: str) -> str | None:
        row = self.db.execute("select experiment_id from experiments where name = ? and workspace = 'default'",
                              (name,)).fetchone()
        return str(row[0]) if row else None

    def runs(self, experiment_id: str | None, tags: dict[str, str], status: str | None = None) -> list[StoredRun]:
        """Active runs whose tags equal ``tags`` (and whose status is ``status``), in one experiment or all."""
        where, args = ["r.lifecycle_stage = 'active'"], []
        if experiment_id is not None:
            where.append("r.experiment_id = ?")
            args.append(int(experiment_id))
        if status:
            where.append("r.status = ?")
            args.append(status)
        for k, v in tags.items():
            where.append("exists (select 1 from tags t where t.run_uuid = r.run_uuid and t.key = ? and t.value = ?)")
            args += [k, v]
        sel = f"select r.run_uuid from runs r where {' and '.join(where)}"
        info = {row[0]: StoredRunInfo(*row) for row in self.db.execute(
            f"select run_uuid, status, start_time, end_time from runs where run_uuid in ({sel})", args)}
        parts: dict[str, dict[str, dict]] = {rid: {"params": {}, "metrics": {}, "tags": {}} for rid in info}
        for table, column in (("params", "value"), ("tags", "value"),
                              ("latest_metrics", "case when is_nan then 'nan' else value end")):
            name = "metrics" if table == "latest_metrics" else table
            for rid, key, value in self.db.execute(
                    f"select run_uuid, key, {column} from {table} where run_uuid in ({sel})", args):
                parts[rid][name][key] = float(value) if name == "metrics" else value
        return [StoredRun(info[rid], StoredRunData(**parts[rid])) for rid in info]


def run_reader(uri: str, command: str = "compare"):
    """The fastest reader that can read ``uri``: SqliteRuns for a local store, else MLflowRuns. A local
    store at a schema revision SqliteRuns does not know (migrated by another MLflow) is read through
    MLflow, with one line on stderr saying so."""
    reader = SqliteRuns.open(uri)
    if reader is not None:
        return reader
    revision = SqliteRuns.revision(uri)
    if revision is not None and revision not in KNOWN_SCHEMA_REVISIONS:
        import sys

        print(f"mnist-exp {command}: store schema {revision} is not one the fast reader knows; reading through MLflow",
              file=sys.stderr, flush=True)
    return MLflowRuns(uri)
