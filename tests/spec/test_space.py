import pytest

from mnist_exp.runtime.errors import ConfigError
from mnist_exp.spec.space import load_space, validate_fixed

from helpers import ROOT, cli_here, runs, write_yaml


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
        ("kernel_size: {type: int, min: 1, max: 7}", "kernel_size.type: kernel_size takes only 1, 3, 5, 7"),
        ("dropout_1: {type: float, min: 0.0, max: 1.5}", "dropout_1.max: must be in [0, 1) (got 1.5)"),
        ("batch_size: {type: fixed}", "batch_size.value: a fixed hyperparameter needs a value"),
        ("batch_norm: {type: boolean, default: 3}", "batch_norm needs a bool"),
        # the levers of the search: every one checked where it is written
        ("conv_blocks: {type: choice, values: [seed, wide]}",
         "hyperparameters.conv_blocks.values: unknown conv_blocks 'wide' (known: seed, deep)"),
        ("conv_blocks: {type: int, min: 1, max: 2}", "conv_blocks.type: conv_blocks is str; a int range does not fit"),
        ("kernel_size: {type: fixed, value: 4}", "hyperparameters.kernel_size.value: must be one of 1, 3, 5, 7 (got 4)"),
        ("kernel_size: {type: choice, values: [3, 6]}", "kernel_size.values: must be one of 1, 3, 5, 7 (got 6)"),
        ("kernel_size: {type: choice, values: [3, 5.0]}", "kernel_size.values: kernel_size needs a int (got 5.0)"),
        ("kernel_size: {type: boolean}", "kernel_size.type: kernel_size is int, not boolean"),
        ("pooling: {type: fixed, value: max}", "hyperparameters.pooling.value: unknown pooling 'max'"),
        ("optimizer: {type: choice, values: [adam, rmsprop]}",
         "hyperparameters.optimizer.values: unknown optimizer 'rmsprop' (known: adam, adamw, sgd)"),
        ("optimizer: {type: choice, values: [adam, sgd], default: adamw}", "optimizer.default: 'adamw' is not one of"),
        ("weight_decay: {type: float, min: 0.0, max: 2.0}", "hyperparameters.weight_decay.max: must be in [0, 1] (got 2.0)"),
        ("weight_decay: {type: choice, values: [0.0, -1.0e-4]}", "weight_decay.values: must be in [0, 1] (got -0.0001)"),
        ("lr_schedule: {type: fixed, value: step}",
         "hyperparameters.lr_schedule.value: unknown lr_schedule 'step' (known: constant, cosine, one_cycle, plateau)"),
        ("lr_schedule: {type: choice, values: [cosine, exponential]}", "unknown lr_schedule 'exponential'"),
        ("warmup_fraction: {type: float, min: 0.0, max: 0.9}",
         "hyperparameters.warmup_fraction.max: must be in [0, 0.5] (got 0.9)"),
        ("label_smoothing: {type: fixed, value: true}",
         "hyperparameters.label_smoothing.value: label_smoothing needs a float (got True)"),
        ("label_smoothing: {type: float, min: -0.1, max: 0.1}", "label_smoothing.min: must be in [0, 0.5] (got -0.1)"),
        ("rotation: {type: float, min: -5, max: 20}", "hyperparameters.rotation.min: must be in [0, 90] (got -5)"),
        ("rotation: {type: fixed, value: 180}", "hyperparameters.rotation.value: must be in [0, 90] (got 180)"),
        ("translation: {type: float, min: 0.0, max: 0.6}", "hyperparameters.translation.max: must be in [0, 0.5] (got 0.6)"),
        ("zoom: {type: float, min: 0.0, max: 0.8}", "hyperparameters.zoom.max: must be in [0, 0.5] (got 0.8)"),
        ("zoom: {type: float, min: 0.0, max: .inf}", "hyperparameters.zoom.max: must be a finite number (got inf)"),
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


def test_power_space_covers_every_lever_and_its_defaults_build_the_seed():
    """Trial 0 of a search over power.yaml is the baseline: every lever's default is the seed's value."""
    from keras import layers

    from mnist_exp.model.cnn import build_model
    from mnist_exp.spec.levers import HP_DEFAULTS

    space = load_space(ROOT / "search_spaces" / "power.yaml")
    levers = {"conv_blocks", "kernel_size", "pooling", "optimizer", "weight_decay", "lr_schedule", "warmup_fraction",
              "label_smoothing", "rotation", "translation", "zoom"}
    assert levers <= set(space.names)
    assert space.defaults() == {name: HP_DEFAULTS[name][1] for name in space.names}
    model = build_model(space.to_hyperparameters(), steps=1000)
    assert [type(ly).__name__ for ly in model.layers] == ["Conv2D", "MaxPooling2D", "Dropout", "Conv2D", "MaxPooling2D",
                                                          "Dropout", "Conv2D", "Flatten", "Dense", "Dense"]
    assert model.count_params() == 187146 and model.loss == "categorical_crossentropy"
    assert type(model.optimizer).__name__ == "Adam" and not isinstance(model.optimizer.get_config()["learning_rate"], dict)
    assert not any(isinstance(ly, layers.BatchNormalization) for ly in model.layers)


def test_every_lever_accepts_its_bounds():
    """The edges of each range are values, not faults (a lever at its maximum is a legal search point)."""
    validate_fixed({"conv_blocks": "deep", "kernel_size": 7, "pooling": "global_avg", "optimizer": "sgd",
                    "weight_decay": 1.0, "lr_schedule": "plateau", "warmup_fraction": 0.5, "label_smoothing": 0.5,
                    "rotation": 90, "translation": 0.5, "zoom": 0.5}, "x.yaml")
    validate_fixed({"kernel_size": 1, "weight_decay": 0, "warmup_fraction": 0.0, "label_smoothing": 0,
                    "rotation": 0.0, "translation": 0, "zoom": 0.0}, "x.yaml")


@pytest.mark.parametrize(
    "setting, message",
    [
        ("hp.conv_blocks=wide", "hp.conv_blocks: unknown conv_blocks 'wide' (known: seed, deep)"),
        ("hp.kernel_size=4", "hp.kernel_size: must be one of 1, 3, 5, 7 (got 4)"),
        ("hp.kernel_size=3.0", "hp.kernel_size: kernel_size needs a int (got 3.0)"),
        ("hp.pooling=max", "hp.pooling: unknown pooling 'max' (known: flatten, global_avg)"),
        ("hp.optimizer=rmsprop", "hp.optimizer: unknown optimizer 'rmsprop' (known: adam, adamw, sgd)"),
        ("hp.weight_decay=2", "hp.weight_decay: must be in [0, 1] (got 2)"),
        ("hp.lr_schedule=step", "hp.lr_schedule: unknown lr_schedule 'step' (known: constant, cosine, one_cycle, plateau)"),
        ("hp.warmup_fraction=0.9", "hp.warmup_fraction: must be in [0, 0.5] (got 0.9)"),
        ("hp.label_smoothing=true", "hp.label_smoothing: label_smoothing needs a float (got True)"),
        ("hp.label_smoothing=0.6", "hp.label_smoothing: must be in [0, 0.5] (got 0.6)"),
        ("hp.rotation=-5", "hp.rotation: must be in [0, 90] (got -5)"),
        ("hp.translation=0.6", "hp.translation: must be in [0, 0.5] (got 0.6)"),
        ("hp.zoom=0.8", "hp.zoom: must be in [0, 0.5] (got 0.8)"),
        ("hp.zoom=.nan", "hp.zoom: must be a finite number (got nan)"),
    ],
)
def test_bad_lever_on_the_command_line_exits_2_naming_it_and_writes_no_run(store, setting, message):
    proc = cli_here("train", "--set", setting, "--epochs", "1", check=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--set {setting}: {message}" in lines[0], proc.stderr
    assert proc.stdout == ""
    assert runs() == []


# --- conditional hyperparameters ------------------------------------------------------------------------------

CONDITIONAL = """hyperparameters:
  lr_schedule: {type: choice, values: [constant, cosine], default: constant}
  warmup_fraction: {type: float, min: 0.0, max: 0.2, step: 0.05, default: 0.0, when: {lr_schedule: cosine}}
  conv_blocks: {type: choice, values: [seed, deep], default: seed}
  batch_norm: {type: boolean, default: false, when: {conv_blocks: [seed]}}
"""


def test_a_conditional_hyperparameter_is_sampled_only_while_its_parent_allows(tmp_path):
    import keras_tuner as kt

    from mnist_exp.spec.levers import hp_value

    space = load_space(write_yaml(tmp_path / "cond.yaml", CONDITIONAL))
    assert dict(space.params[1].when) == {"lr_schedule": ("cosine",)}
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=40, seed=1,
                                           hyperparameters=space.to_hyperparameters())
    oracle._set_project_dir(str(tmp_path), "p")
    seen = []
    for _ in range(12):
        trial = oracle.create_trial("t")
        values = dict(trial.hyperparameters.values)
        seen.append(values)
        assert ("warmup_fraction" in values) == (values["lr_schedule"] == "cosine"), values
        assert ("batch_norm" in values) == (values["conv_blocks"] == "seed"), values
        if "warmup_fraction" not in values:  # the model reads the seed's value; nothing registered on the trial
            assert hp_value(trial.hyperparameters, "warmup_fraction") == 0.0
            assert "warmup_fraction" not in trial.hyperparameters.values
        trial.status = "COMPLETED"
        oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
        oracle.end_trial(trial)
    assert {v["lr_schedule"] for v in seen} == {"constant", "cosine"}


@pytest.mark.parametrize("when, fixed, message", [
    ("{colour: red}", {}, "when.colour: not a hyperparameter warmup_fraction can depend on"),
    ("{lr_schedule: [cosine, step]}", {}, "when.lr_schedule: unknown lr_schedule 'step'"),
    ("{lr_schedule: one_cycle}", {}, "when.lr_schedule: lr_schedule never takes 'one_cycle' (declared as"),
    ("{lr_schedule: cosine}", {"lr_schedule": "constant"},
     "when.lr_schedule: lr_schedule never takes 'cosine' (pinned by hp: to 'constant')"),
    ("{optimizer: sgd}", {}, "when.optimizer: optimizer never takes 'sgd' (not searched: the seed's 'adam')"),
    ("{label_smoothing: 0.1}", {}, "when.label_smoothing: declare label_smoothing above warmup_fraction"),
    ("[lr_schedule]", {}, "when: must be a mapping"),
])
def test_a_condition_no_trial_can_meet_is_one_line_naming_the_key(tmp_path, when, fixed, message):
    text = f"""hyperparameters:
  lr_schedule: {{type: choice, values: [constant, cosine]}}
  warmup_fraction: {{type: float, min: 0.0, max: 0.2, default: 0.0, when: {when}}}
  label_smoothing: {{type: float, min: 0.0, max: 0.2, default: 0.0}}
"""
    path = write_yaml(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_space(path).check_conditions(fixed)
    assert str(e.value).startswith(f"{path}: hyperparameters.warmup_fraction.") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_a_bad_condition_stops_the_sweep_command_before_anything_is_written(store):
    space = write_yaml(store / "bad.yaml", CONDITIONAL.replace("when: {lr_schedule: cosine}",
                                                              "when: {lr_schedule: cyclic}"))
    exp = write_yaml(store / "e.yaml", f"name: e\nsearch_space: {space}\n")
    proc = cli_here("sweep", exp, check=2)
    assert proc.stderr.strip().splitlines() == [
        f"mnist-exp sweep: error: {space}: hyperparameters.warmup_fraction.when.lr_schedule: unknown lr_schedule "
        "'cyclic' (known: constant, cosine, one_cycle, plateau)"]
    assert not runs()
