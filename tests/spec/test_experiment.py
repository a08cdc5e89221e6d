import pytest

from mnist_exp.spec.experiment import load_experiment
from mnist_exp.runtime.errors import ConfigError

from helpers import ROOT, write_yaml


def test_shipped_experiments_load_and_start_with_their_command():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        exp = load_experiment(path)
        first = path.read_text().splitlines()[0]
        assert first.startswith("# mnist-exp ") and f"experiments/{path.name}" in first, path
        assert exp.name == path.stem


def test_defaults_and_overrides():
    exp = load_experiment(None, ["training.epochs=3", "tuner.kind=bayesian", "hp.learning_rate=3e-4"])
    assert exp.training.epochs == 3 and exp.tuner.kind == "bayesian" and exp.hp == {"learning_rate": 3e-4}
    assert exp.data.source == "embedded" and exp.objective.name == "val_accuracy"


@pytest.mark.parametrize(
    "text, message",
    [
        ("tunr: {kind: random}", "tunr: unknown key"),
        ("tuner: {kind: evolution}", "tuner.kind: must be one of random, bayesian, hyperband, grid, tpe (got 'evolution')"),
        ("tuner: {max_trials: many}", "tuner.max_trials: must be int (got 'many')"),
        ("tuner: {max_trials: 0}", "tuner.max_trials: must be at least 1"),
        ("tuner: {ensemble: -1}", "tuner.ensemble: must be 0 (no ensemble) or more (got -1)"),
        ("tuner: {ensemble: 1000}", "tuner.ensemble: must be at most 100"),
        ("tuner: {ensemble: 3}\ndata: {validation_split: 0.0}", "tuner.ensemble: members are chosen on the validation split"),
        ("training: {epochs: 2.5}", "training.epochs: must be int (got 2.5)"),
        ("training: {epoch: 2}", "training.epoch: unknown key"),
        ("data: {validation_split: 1.5}", "data.validation_split: must be in [0, 1)"),
        ("objective: {name: test_accuracy}", "objective.name: must be one of"),
        ("objective: {direction: up}", "objective.direction: must be max or min"),
        ("search_space: nowhere.yaml", "search_space: file not found"),
        ("- a\n- b", "top level must be a mapping"),
        ("tuner: [1, 2]", "tuner: must be a mapping"),
        ("name: 'a b'", "name: must be a non-empty name"),
    ],
)
def test_bad_experiment_is_one_line_naming_file_and_key(tmp_path, text, message):
    path = write_yaml(tmp_path / "exp.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_experiment(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_bad_override_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_experiment(None, ["training.epochs"])
    path = write_yaml(tmp_path / "broken.yaml", "tuner: {kind: random\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(path)
