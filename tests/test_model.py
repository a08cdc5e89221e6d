import keras_tuner as kt
from keras import layers

from mnist_exp.model import HP_DEFAULTS, build_model


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


def test_mixed_precision_computes_in_low_precision_and_keeps_a_float32_softmax(embedded):
    import numpy as np

    from mnist_exp.data import one_hot, to_model_inputs

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
