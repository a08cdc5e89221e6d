"""A sweep's state file across releases (mnist_exp/sweep_state.py): a config field added later with a default
changes no sweep's identity, a format-1 state (mnist-exp 0.1.0) resumes and is migrated, a real change
is still refused, and a state from a newer release is one line."""

import dataclasses
import hashlib
import json

from mnist_exp._version import __version__
from mnist_exp.search import sweep_state
from mnist_exp.cli import main
from mnist_exp.spec.experiment import TrainingConfig, load_experiment
from mnist_exp.spec.space import Param, load_space

from helpers import TINY_SWEEP, runs, write_yaml
import pytest

TINY = TINY_SWEEP.replace("max_trials: 2", "max_trials: 1")


def identity_0_1_0(exp, space) -> dict:
    """sweep.identity exactly as mnist-exp 0.1.0 (commit 74cf6ac) computed it."""
    later = ("max_trials", "parallel_trials", "budget", "refit", "pruner", "pruner_warmup_epochs", "pruner_min_trials",
             "pruner_reduction_factor", "warm_start", "ensemble")  # not in 0.1.0's tuner section
    tuner = {k: v for k, v in dataclasses.asdict(exp.tuner).items() if k not in later}
    sections = {
        "search space": [{k: v for k, v in dataclasses.asdict(p).items() if k != "when"} for p in space.params],
        "tuner": tuner,
        "objective": dataclasses.asdict(exp.objective),
        "fixed hyperparameters (hp)": exp.hp,
        "data": dataclasses.asdict(exp.data),
        "training": dataclasses.asdict(exp.training),
        "seed": exp.seed,
    }
    return {k: hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for k, v in sections.items()}


# A later release's config: a new training field and a new search-space key, each with a default that
# keeps today's behaviour.
TrainingV3 = dataclasses.make_dataclass("TrainingV3", [("label_smoothing", float, dataclasses.field(default=0.0))],
                                        bases=(TrainingConfig,), frozen=True)
ParamV3 = dataclasses.make_dataclass("ParamV3", [("condition", str | None, dataclasses.field(default=None))],
                                     bases=(Param,), frozen=True)


def upgraded(exp, space, **new):
    """``exp`` and ``space`` as the later release would load the same files (``new`` sets its fields)."""
    training = TrainingV3(**dataclasses.asdict(exp.training), label_smoothing=new.get("label_smoothing", 0.0))
    params = tuple(ParamV3(**dataclasses.asdict(p), condition=new.get("condition")) for p in space.params)
    return dataclasses.replace(exp, training=training), dataclasses.replace(space, params=params)


def test_a_field_added_with_its_default_changes_no_identity_and_a_real_change_is_named(tmp_path):
    exp = load_experiment(write_yaml(tmp_path / "tiny.yaml", TINY))
    space = load_space(exp.search_space)
    v2 = {"format": 2, "identity": sweep_state.identity(exp, space)}
    v1 = {"format": 1, "identity": identity_0_1_0(exp, space)}
    assert sweep_state.identity_format1(exp, space) == (identity_0_1_0(exp, space), [])  # format 1 read the old way

    new_exp, new_space = upgraded(exp, space)
    assert sweep_state.identity(new_exp, new_space) == sweep_state.identity(exp, space)
    assert identity_0_1_0(new_exp, new_space) != identity_0_1_0(exp, space)  # what broke resuming in 0.1.0
    assert sweep_state.changed_sections(v2, new_exp, new_space) == []
    assert sweep_state.changed_sections(v1, new_exp, new_space) == []
    # the new fields set to something else are real changes, in the section that holds them
    for new, section in (({"label_smoothing": 0.1}, "training"), ({"condition": "batch_norm"}, "search space")):
        changed_exp, changed_space = upgraded(exp, space, **new)
        assert sweep_state.changed_sections(v2, changed_exp, changed_space) == [section]
        assert sweep_state.changed_sections(v1, changed_exp, changed_space) == [section]
    # so are changes to fields that existed; max_trials and parallel_trials are not part of the identity
    more = dataclasses.replace(exp, tuner=dataclasses.replace(exp.tuner, max_trials=9, parallel_trials=2))
    assert sweep_state.changed_sections(v2, more, space) == sweep_state.changed_sections(v1, more, space) == []
    for changed, sections in (
            (dataclasses.replace(exp, training=dataclasses.replace(exp.training, epochs=2), seed=7), ["training", "seed"]),
            (dataclasses.replace(exp, data=dataclasses.replace(exp.data, train_size=300)), ["data"])):
        assert sweep_state.changed_sections(v2, changed, space) == sweep_state.changed_sections(v1, changed, space) == sections
    # one spelling per value: a float given as 1.0 or 1 is one identity
    assert sweep_state.identity(dataclasses.replace(exp, hp={"dropout": 0.0}), space) == \
        sweep_state.identity(dataclasses.replace(exp, hp={"dropout": 0}), space)


@pytest.mark.slow
def test_a_format1_state_refuses_a_real_change_then_resumes_and_is_migrated(store, capsys):
    exp_file = write_yaml(store / "tiny.yaml", TINY)
    assert main(["sweep", str(exp_file)]) == 0
    path = store / "mlruns" / "tuner" / "tiny" / sweep_state.STATE_FILE
    now = json.loads(path.read_text())
    assert now["format"] == 2
    exp = load_experiment(exp_file)
    space = load_space(exp.search_space)
    # the state as 0.1.0 wrote it: its keys only, its identity, no format
    old = {k: now[k] for k in ("name", "parent_run_id", "experiment_id", "created", "experiment", "data_fingerprint")}
    path.write_text(json.dumps({**old, "identity": identity_0_1_0(exp, space)}))
    written = path.read_bytes()
    capsys.readouterr()

    assert main(["sweep", str(exp_file), "--epochs", "2", "--max-trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err == (f"mnist-exp sweep: error: {exp_file}: sweep 'tiny' exists with a different training; "
                   "resume it unchanged, or start afresh with --overwrite or a new --name\n")
    assert path.read_bytes() == written  # refused: nothing migrated

    assert main(["sweep", str(exp_file), "--max-trials", "2"]) == 0
    assert "resuming, 1 trial(s) done" in capsys.readouterr().out
    migrated = json.loads(path.read_text())
    assert migrated["format"] == sweep_state.FORMAT == 2 and migrated["written_by"] == __version__
    assert migrated["identity"] == sweep_state.identity(exp, space) != identity_0_1_0(exp, space)
    assert {k: migrated[k] for k in old if k != "experiment"} == {k: v for k, v in old.items() if k != "experiment"}
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []  # written by rename
    [parent] = runs(filter_string="tags.`mnist_exp.kind` = 'sweep'")
    trials = runs(filter_string="tags.`mnist_exp.kind` = 'trial'")
    assert parent.info.run_id == old["parent_run_id"] and parent.info.status == "FINISHED"
    assert len(trials) == 2 and {t.info.status for t in trials} == {"FINISHED"}
    # every run says which release wrote it
    assert {r.data.tags["mnist_exp.version"] for r in [parent, *trials]} == {__version__}


def test_a_state_from_a_newer_release_is_one_line_and_nothing_is_written(store, capsys):
    exp_file = write_yaml(store / "tiny.yaml", TINY)
    folder = store / "mlruns" / "tuner" / "tiny"
    folder.mkdir(parents=True)
    path = folder / sweep_state.STATE_FILE
    path.write_text(json.dumps({"format": 99, "name": "tiny", "parent_run_id": "0" * 32, "identity": {}}))
    written = path.read_bytes()

    assert main(["sweep", str(exp_file)]) == 2
    out, err = capsys.readouterr()
    assert err == (f"mnist-exp sweep: error: {path}: sweep state format 99 was written by a newer mnist-exp "
                   f"(mnist-exp {__version__} reads formats 1 to 2); upgrade mnist-exp\n")
    assert "sweep tiny" not in out
    assert path.read_bytes() == written and [p.name for p in folder.iterdir()] == [sweep_state.STATE_FILE]
    assert runs() == []


def test_hyperband_identity_leaves_out_training_epochs_and_still_resumes_a_0_3_0_sweep(tmp_path):
    exp = load_experiment(write_yaml(tmp_path / "tiny.yaml", TINY), ["tuner.kind=hyperband", "training.epochs=5"])
    space = load_space(exp.search_space)
    longer = dataclasses.replace(exp, training=dataclasses.replace(exp.training, epochs=7))
    assert sweep_state.identity(longer, space) == sweep_state.identity(exp, space)  # Hyperband sets each trial's epochs
    as_0_3_0 = {"format": 2, "identity": sweep_state.identity(exp, space, epochs_decided_by_tuner=False)}
    assert as_0_3_0["identity"]["training"] != sweep_state.identity(exp, space)["training"]
    assert sweep_state.changed_sections(as_0_3_0, exp, space) == []  # recorded with epochs, resumed unchanged
    assert sweep_state.changed_sections(as_0_3_0, longer, space) == ["training"]  # but a real change is still named
    rand = dataclasses.replace(exp, tuner=dataclasses.replace(exp.tuner, kind="random"))
    rand_longer = dataclasses.replace(rand, training=longer.training)
    assert sweep_state.identity(rand_longer, space)["training"] != sweep_state.identity(rand, space)["training"]
