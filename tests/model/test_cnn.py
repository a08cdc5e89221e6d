import math

import keras
import keras_tuner as kt
import numpy as np
import pytest
from keras import layers

from mnist_exp.model.cnn import build_model, learning_rate_schedule, plateau_callback
from mnist_exp.spec.levers import HP_DEFAULTS


def test_default_model_is_the_seed_baseline_layer_by_layer():
    model = build_model()
    expected = [
        (layers.Conv2D, {"filters": 128, "kernel_size": (3, 3), "activation": "relu"}),
        (layers.MaxPooling2D, {"pool_size": (2, 2)}),
        (layers.Dropout, {"rate": 0.5}),
        (layers.Conv2D, {"filters": 64, "kernel_size": (3, 3), "activation": "relu"}),
        (layers.MaxPooling2D, {"pool_size": (2, 2)}),
        (layers.Dropout, {"rate": 0.5}),
        (layers.Conv2D, {"filters": 64, "kernel_size": (3, 3), "activation": "relu"}),
        (layers.Flatten, {}),
        (layers.Dense, {"units": 128, "activation": "relu"}),
        (layers.Dense, {"units": 10, "activation": "softmax"}),
    ]
    assert len(model.layers) == len(expected)
    for layer, (cls, attrs) in zip(model.layers, expected):
        assert type(layer) is cls, layer
        cfg = layer.get_config()
        for k, v in attrs.items():
            got = tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k]
            assert got == v, (layer.name, k, got, v)
    # 1280 + 73792 + 36928 + 73856 + 1290 trainable parameters, as the seed's summary shows.
    assert model.count_params() == 187146
    assert model.output_shape == (None, 10)
    opt = model.optimizer
    assert type(opt).__name__ == "Adam"
    assert abs(float(opt.learning_rate) - 1e-3) < 1e-9  # stored as float32
    assert model.loss == "categorical_crossentropy"


def test_every_hyperparameter_defaults_to_the_baseline_and_can_be_changed():
    hp = kt.HyperParameters()
    build_model(hp)
    assert hp.values == {name: default for name, (_, default) in HP_DEFAULTS.items()}
    hp = kt.HyperParameters()
    hp.Fixed("filters_1", 32)
    hp.Fixed("activation", "gelu")
    hp.Fixed("dropout_2", 0.25)
    hp.Fixed("batch_norm", True)
    model = build_model(hp)
    convs = [ly for ly in model.layers if isinstance(ly, layers.Conv2D)]
    assert convs[0].filters == 32
    assert [ly.rate for ly in model.layers if isinstance(ly, layers.Dropout)] == [0.5, 0.25]
    assert sum(isinstance(ly, layers.BatchNormalization) for ly in model.layers) == 3
    assert model.layers[-2].get_config()["activation"] == "gelu"


@pytest.mark.slow
def test_mixed_precision_computes_in_low_precision_and_keeps_a_float32_softmax(embedded):
    import numpy as np

    from mnist_exp.model.data import one_hot, to_model_inputs

    x, y = to_model_inputs(embedded["x_train"][:64]), one_hot(embedded["y_train"][:64])
    for policy, low in (("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")):
        model = build_model(None, mixed_precision=policy)
        convs = [ly for ly in model.layers if isinstance(ly, layers.Conv2D)]
        assert {ly.compute_dtype for ly in convs} == {low} and {ly.variable_dtype for ly in convs} == {"float32"}
        assert model.layers[-1].compute_dtype == "float32"
        assert (type(model.optimizer).__name__ == "LossScaleOptimizer") == (policy == "mixed_float16")
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        assert model.predict(x[:4], verbose=0).dtype == np.float32
    assert build_model().layers[0].compute_dtype == "float32"  # no global policy left behind


# --- the levers of the search (issue 10) ------------------------------------------------------------

SEED_TYPES = [layers.Conv2D, layers.MaxPooling2D, layers.Dropout, layers.Conv2D, layers.MaxPooling2D, layers.Dropout,
              layers.Conv2D, layers.Flatten, layers.Dense, layers.Dense]


def hps(**values) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    for name, value in values.items():
        hp.Fixed(name, value)
    return hp


def schedule_config(model) -> dict:
    """The optimizer's learning-rate schedule as Keras serialises it (class_name + config)."""
    lr = model.optimizer.get_config()["learning_rate"]
    assert isinstance(lr, dict), f"a constant rate {lr}, not a schedule"
    return lr


def test_defaults_of_the_new_levers_keep_the_seed_even_when_steps_are_known():
    """The new levers at their defaults add nothing: no augmentation, no batch norm, the seed's flatten head,
    Adam at a constant 1e-3 (no schedule even when the step count is given), plain cross-entropy."""
    for hp in (None, kt.HyperParameters(), hps(conv_blocks="seed", pooling="flatten", optimizer="adam",
                                               lr_schedule="constant", rotation=0.0, translation=0.0, zoom=0.0)):
        model = build_model(hp, steps=500)
        assert [type(ly) for ly in model.layers] == SEED_TYPES
        assert model.count_params() == 187146
        assert [tuple(ly.kernel_size) for ly in model.layers if isinstance(ly, layers.Conv2D)] == [(3, 3)] * 3
        opt = model.optimizer
        assert type(opt) is keras.optimizers.Adam and opt.get_config()["weight_decay"] is None
        assert not isinstance(opt.get_config()["learning_rate"], dict)  # a plain rate, not a schedule
        assert abs(float(opt.learning_rate) - 1e-3) < 1e-9
        assert model.loss == "categorical_crossentropy"


def _deep(model):
    convs = [ly for ly in model.layers if isinstance(ly, layers.Conv2D)]
    assert len(convs) == 7
    assert sum(isinstance(ly, layers.BatchNormalization) for ly in model.layers) == 7
    assert [tuple(c.kernel_size) for c in convs] == [(3, 3), (3, 3), (5, 5), (3, 3), (3, 3), (5, 5), (3, 3)]
    assert [c.strides for c in convs if tuple(c.strides) != (1, 1)] == [(2, 2), (2, 2)]
    assert not any(isinstance(ly, (layers.Flatten, layers.GlobalAveragePooling2D)) for ly in model.layers[:-4])


def _kernel5(model):
    convs = [ly for ly in model.layers if isinstance(ly, layers.Conv2D)]
    assert [tuple(c.kernel.shape[:2]) for c in convs] == [(5, 5)] * 3
    assert [type(ly) for ly in model.layers] == SEED_TYPES


def _global_avg(model):
    assert any(isinstance(ly, layers.GlobalAveragePooling2D) for ly in model.layers)
    assert not any(isinstance(ly, layers.Flatten) for ly in model.layers)
    assert model.count_params() < 187146  # the dense head reads 64 averages, not 3x3x64 positions


def _adamw(model):
    opt = model.optimizer
    assert type(opt) is keras.optimizers.AdamW and opt.get_config()["weight_decay"] == pytest.approx(0.01)


def _sgd(model):
    cfg = model.optimizer.get_config()
    assert type(model.optimizer) is keras.optimizers.SGD
    assert cfg["nesterov"] is True and cfg["momentum"] == pytest.approx(0.9) and cfg["weight_decay"] == pytest.approx(0.01)


def _smoothing(model):
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)


def _augmented(cls, check):
    def verify(model):
        first = model.layers[0]  # right after the input, before any convolution
        assert type(first) is cls and type(model.layers[1]) is layers.Conv2D
        cfg = first.get_config()
        assert cfg["fill_mode"] == "constant" and cfg["fill_value"] == 0.0
        assert check(cfg), cfg
        assert [type(ly) for ly in model.layers[1:]] == SEED_TYPES
    return verify


@pytest.mark.parametrize("values, check", [
    ({"conv_blocks": "deep"}, _deep),
    ({"kernel_size": 5}, _kernel5),
    ({"pooling": "global_avg"}, _global_avg),
    ({"optimizer": "adamw", "weight_decay": 0.01}, _adamw),
    ({"optimizer": "sgd", "weight_decay": 0.01}, _sgd),
    ({"label_smoothing": 0.1}, _smoothing),
    ({"rotation": 20.0}, _augmented(layers.RandomRotation,
                                    lambda c: c["factor"] == pytest.approx((-20 / 360, 20 / 360)))),
    ({"translation": 0.2}, _augmented(layers.RandomTranslation,
                                      lambda c: c["height_factor"] == c["width_factor"] == 0.2)),
    ({"zoom": 0.2}, _augmented(layers.RandomZoom, lambda c: c["height_factor"] == c["width_factor"] == 0.2)),
], ids=["deep", "kernel_5", "global_avg", "adamw", "sgd", "label_smoothing", "rotation", "translation", "zoom"])
def test_each_lever_changes_the_model_as_intended(values, check):
    model = build_model(hps(**values))
    check(model)
    assert model.output_shape == (None, 10)


@pytest.mark.slow
@pytest.mark.parametrize("conv_blocks", ["seed", "deep"])
def test_every_kernel_size_and_pooling_builds_and_predicts_ten_classes(conv_blocks, embedded):
    from mnist_exp.model.data import to_model_inputs

    x = to_model_inputs(embedded["x_train"][:2])
    for k in (1, 3, 5, 7):
        for pooling in ("flatten", "global_avg"):
            model = build_model(hps(conv_blocks=conv_blocks, kernel_size=k, pooling=pooling))
            assert model.output_shape == (None, 10), (k, pooling)
            probs = model.predict(x, verbose=0)
            assert probs.shape == (2, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4), (k, pooling)


def test_augmentation_is_active_in_training_only(embedded):
    """Dropout off, so training=True can differ from inference through the augmentation alone; at inference
    the augmented model is the plain model with the same weights."""
    from mnist_exp.model.data import to_model_inputs

    x = to_model_inputs(embedded["x_train"][:8])
    common = {"dropout_1": 0.0, "dropout_2": 0.0}
    keras.utils.set_random_seed(0)
    augmented = build_model(hps(rotation=20.0, translation=0.2, zoom=0.2, **common))
    plain = build_model(hps(**common))
    assert len(augmented.layers) == len(plain.layers) + 3
    plain.set_weights(augmented.get_weights())

    first, second = augmented.predict(x, verbose=0), augmented.predict(x, verbose=0)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(np.asarray(augmented(x, training=False)), first, atol=1e-6)
    np.testing.assert_allclose(plain.predict(x, verbose=0), first, atol=1e-6)
    trained_view = np.asarray(augmented(x, training=True))
    assert np.abs(trained_view - first).max() > 1e-3, ("training=True did not augment", np.abs(trained_view - first).max())
    np.testing.assert_allclose(np.asarray(plain(x, training=True)), first, atol=1e-6)  # no dropout: same as inference
    seen_in_training, seen_at_inference = x, x  # the images the first convolution sees
    for ly in augmented.layers[:3]:
        seen_in_training = np.asarray(ly(seen_in_training, training=True))
        seen_at_inference = np.asarray(ly(seen_at_inference, training=False))
    np.testing.assert_array_equal(seen_at_inference, x)
    moved = np.abs(seen_in_training - x).max(axis=(1, 2, 3))
    assert (moved > 0.5).all(), moved  # every digit's strokes moved


def _lr(schedule, step) -> float:
    return float(schedule(step)) if callable(schedule) else float(schedule)


def test_learning_rate_schedules_have_their_shapes():
    peak = 1e-3
    assert learning_rate_schedule(keras, "constant", peak, 0.0, 100) == peak
    assert learning_rate_schedule(keras, "plateau", peak, 0.0, 100) == peak  # a callback lowers it, not a schedule
    for kind in ("cosine", "one_cycle"):  # no step count: no schedule to span
        assert learning_rate_schedule(keras, kind, peak, 0.1, None) == peak

    cosine = learning_rate_schedule(keras, "cosine", peak, 0.1, 100)
    assert _lr(cosine, 0) == pytest.approx(0.0, abs=1e-9)
    assert _lr(cosine, 5) == pytest.approx(peak / 2, rel=1e-4)  # linear warm-up
    assert _lr(cosine, 10) == pytest.approx(peak, rel=1e-5)
    assert _lr(cosine, 55) == pytest.approx(peak / 2, rel=1e-3)  # half-way down the cosine
    assert _lr(cosine, 100) == pytest.approx(0.0, abs=1e-9)
    no_warmup = learning_rate_schedule(keras, "cosine", peak, 0.0, 100)
    assert _lr(no_warmup, 0) == pytest.approx(peak, rel=1e-5) and _lr(no_warmup, 100) == pytest.approx(0.0, abs=1e-9)

    one_cycle = learning_rate_schedule(keras, "one_cycle", peak, 0.0, 100)
    assert _lr(one_cycle, 0) == pytest.approx(peak / 25, rel=1e-5)
    assert _lr(one_cycle, 30) == pytest.approx(peak, rel=1e-5)
    assert _lr(one_cycle, 100) == pytest.approx(peak / 1e4, rel=1e-3)
    values = [_lr(one_cycle, s) for s in range(101)]
    assert values[:31] == sorted(values[:31]) and values[30:] == sorted(values[30:], reverse=True)


def test_plateau_callback_only_for_the_plateau_schedule():
    cb = plateau_callback(keras, hps(lr_schedule="plateau", learning_rate=2e-3), "val_loss")
    assert isinstance(cb, keras.callbacks.ReduceLROnPlateau)
    assert cb.monitor == "val_loss" and cb.factor == 0.5 and cb.patience == 2 and cb.min_lr == pytest.approx(2e-5)
    for kind in ("constant", "cosine", "one_cycle"):
        assert plateau_callback(keras, hps(lr_schedule=kind), "val_loss") is None
    assert plateau_callback(keras, kt.HyperParameters(), "loss") is None  # the default: constant


@pytest.mark.parametrize("bookkeeping, epochs_trained", [({}, 3), ({"tuner/epochs": 4, "tuner/initial_epoch": 2}, 2)])
def test_hypermodel_schedule_spans_the_trials_own_steps(bookkeeping, epochs_trained):
    """250 digits at batch 32 are 8 steps an epoch: the one-cycle schedule spans the epochs the trial trains
    (Hyperband's tuner/epochs - tuner/initial_epoch, else training.epochs)."""
    from mnist_exp.model.training import CNNHyperModel

    hp = hps(lr_schedule="one_cycle", batch_size=32, **bookkeeping)
    model = CNNHyperModel(n_train=250, epochs=3).build(hp)
    cfg = schedule_config(model)["config"]
    assert cfg["decay_steps"] + cfg["warmup_steps"] == epochs_trained * math.ceil(250 / 32)
    assert cfg["warmup_target"] == pytest.approx(1e-3) and cfg["initial_learning_rate"] == pytest.approx(1e-3 / 25)


@pytest.mark.slow
def test_tiny_fits_with_one_cycle_and_plateau(embedded):
    """Real fits through the hypermodel: one-cycle ends an epoch at peak/1e4; plateau (a rate too small to move
    the validation loss) halves the rate after two epochs without progress."""
    from mnist_exp.model.data import one_hot, to_model_inputs
    from mnist_exp.model.training import CNNHyperModel, _current_lr

    x, y = to_model_inputs(embedded["x_train"][:200]), one_hot(embedded["y_train"][:200])
    val = (to_model_inputs(embedded["x_train"][200:250]), one_hot(embedded["y_train"][200:250]))
    small = {"filters_1": 8, "filters_2": 8, "filters_3": 8, "dense_units": 16, "batch_size": 32}

    hp = hps(lr_schedule="one_cycle", **small)
    hm = CNNHyperModel(n_train=200, epochs=1)
    model = hm.build(hp)
    history = hm.fit(hp, model, x, y, validation_data=val, epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][0])
    assert int(model.optimizer.iterations) == 7  # ceil(200 / 32)
    assert _current_lr(model) == pytest.approx(1e-3 / 1e4, rel=1e-3)
    assert "learning_rate" not in history.history  # no plateau callback

    hp = hps(lr_schedule="plateau", learning_rate=1e-9, **small)
    hm = CNNHyperModel(n_train=200, epochs=3)
    model = hm.build(hp)
    history = hm.fit(hp, model, x, y, validation_data=val, epochs=3, verbose=0)
    assert all(math.isfinite(v) for v in history.history["loss"])
    assert len(history.history["learning_rate"]) == 3  # ReduceLROnPlateau ran each epoch
    assert _current_lr(model) == pytest.approx(0.5e-9, rel=1e-3)


@pytest.mark.slow
def test_train_logs_the_learning_rate_of_each_epoch(store):
    """A real `mnist-exp train` with one_cycle: 180 training digits at batch 32 are 6 steps an epoch, 12 in all;
    epoch 1 ends past the warm-up, epoch 2 at the schedule's end (peak/1e4)."""
    from mlflow import MlflowClient

    from mnist_exp.cli import main

    from helpers import runs

    assert main(["train", "--set", "data.train_size=200", "--set", "data.test_size=100", "--epochs", "2",
                 "--set", "hp.lr_schedule=one_cycle", "--set", "hp.batch_size=32"]) == 0
    [run] = runs()
    assert run.info.status == "FINISHED" and run.data.params["lr_schedule"] == "one_cycle"
    assert run.data.params["data.n_train"] == "180"
    hist = sorted(MlflowClient().get_metric_history(run.info.run_id, "learning_rate"), key=lambda m: m.step)
    assert [m.step for m in hist] == [1, 2]
    first, last = (m.value for m in hist)
    assert 1e-3 / 1e4 < first < 1e-3 and last == pytest.approx(1e-3 / 1e4, rel=1e-3) and last < first
