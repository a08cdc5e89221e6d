import pytest

from mnist_exp.errors import ConfigError
from mnist_exp.space import load_space, validate_fixed

from conftest import ROOT, write_yaml


def test_baseline_space_is_centred_on_the_seed():
    space = load_space(ROOT / "search_spaces" / "baseline.yaml")
    assert space.defaults() == {"learning_rate": 1e-3, "filters_1": 128, "filters_2": 64, "filters_3": 64,
                                "dropout_1": 0.5, "dropout_2": 0.5, "dense_units": 128, "activation": "relu",
                                "batch_size": 16}
    hp = space.to_hyperparameters()
    assert hp.values == space.defaults()
    acts = next(p for p in hp.space if p.name == "activation").values
    assert {"relu", "elu", "selu", "gelu", "swish"} <= set(acts)
    lr = next(p for p in hp.space if p.name == "learning_rate")
    assert lr.sampling == "log" and lr.min_value == 1e-4 and lr.max_value == 1e-2


def test_every_kind_of_parameter(tmp_path):
    path = write_yaml(tmp_path / "s.yaml", """
hyperparameters:
  learning_rate: {type: float, min: 1.0e-4, max: 1.0e-2, sampling: log}
  dropout_1: {type: float, min: 0.0, max: 0.5, step: 0.25, default: 0.25}
  filters_1: {type: int, min: 16, max: 64, step: 16, default: 32}
  activation: {type: choice, values: [relu, gelu]}
  batch_norm: {type: boolean, default: true}
  batch_size: {type: fixed, value: 32}
""")
    hp = load_space(path).to_hyperparameters(fixed={"filters_1": 48})
    assert hp.values == {"filters_1": 48, "learning_rate": 1e-3, "dropout_1": 0.25, "activation": "relu",
                         "batch_norm": True, "batch_size": 32}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("colour: {type: choice, values: [red]}", "hyperparameters.colour: the model has no such hyperparameter"),
        ("filters_1: {type: int, min: 64, max: 32}", "hyperparameters.filters_1.min: min 64 > max 32"),
        ("filters_1: {type: int, min: 16, max: 64, default: 128}", "filters_1.default: 128 is outside [16, 64]"),
        ("activation: {type: choice, values: []}", "hyperparameters.activation.values: must be a non-empty list"),
        ("activation: {type: choice, values: [relu, sparkle]}", "unknown activation 'sparkle'"),
        ("activation: {type: choice, values: [relu], default: elu}", "activation.default: 'elu' is not one of"),
        ("filters_1: {type: int, min: 16.5, max: 64}", "filters_1.min: must be an integer"),
        ("filters_1: {type: float, min: 16, max: 64}", "filters_1.type: filters_1 is int"),
        ("dropout_1: {type: float, min: 0.0, max: 0.5, sampling: log}", "log sampling needs min > 0"),
        ("learning_rate: {type: float, min: 1.0e-4, max: 0.1, smapling: log}", "learning_rate.smapling: unknown key"),
        ("learning_rate: {type: gaussian}", "learning_rate.type: must be one of int, float, choice, boolean, fixed"),
        ("dropout_1: {type: float, min: 0.0, max: 1.5}", "dropout_1.max: must be in [0, 1) (got 1.5)"),
        ("batch_size: {type: fixed}", "batch_size.value: a fixed hyperparameter needs a value"),
        ("batch_norm: {type: boolean, default: 3}", "batch_norm needs a bool"),
    ],
)
def test_bad_space_is_one_line_naming_file_key_and_fault(tmp_path, spec, message):
    path = write_yaml(tmp_path / "space.yaml", "hyperparameters:\n  " + spec + "\n")
    with pytest.raises(ConfigError) as e:
        load_space(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_top_level_unknown_key_and_empty_space(tmp_path):
    with pytest.raises(ConfigError, match="hyperparams: unknown key"):
        load_space(write_yaml(tmp_path / "a.yaml", "hyperparams: {}"))
    with pytest.raises(ConfigError, match="must be a non-empty mapping"):
        load_space(write_yaml(tmp_path / "b.yaml", "hyperparameters: {}"))


def test_fixed_values_checked_against_the_model():
    validate_fixed({"learning_rate": 3e-4, "activation": "elu"}, "x.yaml")
    with pytest.raises(ConfigError, match="x.yaml: hp.filters_9: the model has no such hyperparameter"):
        validate_fixed({"filters_9": 3}, "x.yaml")
    with pytest.raises(ConfigError, match="hp.filters_1: filters_1 needs a int"):
        validate_fixed({"filters_1": "many"}, "x.yaml")
