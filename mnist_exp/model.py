"""The CNN as a function of Keras Tuner hyperparameters; defaults are the seed baseline.

``HP_DEFAULTS`` is plain data (no TensorFlow import) so that search spaces can be
validated before anything heavy loads.
"""

from __future__ import annotations

# name -> (python type, default). Defaults reproduce the seed baseline exactly.
HP_DEFAULTS: dict[str, tuple[type, object]] = {
    "learning_rate": (float, 1e-3),
    "filters_1": (int, 128),
    "filters_2": (int, 64),
    "filters_3": (int, 64),
    "dropout_1": (float, 0.5),
    "dropout_2": (float, 0.5),
    "dense_units": (int, 128),
    "activation": (str, "relu"),
    "batch_norm": (bool, False),
    "batch_size": (int, 16),
}
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "swish", "silu", "tanh", "sigmoid", "leaky_relu", "mish", "softplus")
TUNER_BOOKKEEPING_PREFIX = "tuner/"  # Hyperband's tuner/epochs, tuner/trial_id, ...


def hp_value(hp, name: str):
    """Register ``name`` on ``hp`` with its baseline default (unless the space defines it) and return it."""
    if name in hp.values:
        return hp.get(name)
    return hp.Fixed(name, HP_DEFAULTS[name][1])


def build_model(hp=None, steps_per_execution: int = 1, mixed_precision: str | None = None):
    """Build and compile the CNN. ``build_model()`` is the seed baseline.

    >>> import keras_tuner as kt
    >>> hp = kt.HyperParameters(); hp.Fixed("learning_rate", 3e-4)
    >>> model = build_model(hp)  # the baseline with another learning rate
    """
    import keras
    import keras_tuner as kt
    from keras import layers

    hp = hp if hp is not None else kt.HyperParameters()
    v = {name: hp_value(hp, name) for name in HP_DEFAULTS}
    act = v["activation"]
    # Mixed precision per layer, not Keras's global policy: one process runs many trials. The softmax
    # stays float32 so the loss is computed in float32.
    dt = {"dtype": mixed_precision} if mixed_precision else {}

    def conv(filters):
        out = [layers.Conv2D(filters, (3, 3), activation=None if v["batch_norm"] else act, **dt)]
        if v["batch_norm"]:
            out += [layers.BatchNormalization(**dt), layers.Activation(act, **dt)]
        return out

    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            *conv(v["filters_1"]),
            layers.MaxPooling2D((2, 2), **dt),
            layers.Dropout(v["dropout_1"], **dt),
            *conv(v["filters_2"]),
            layers.MaxPooling2D((2, 2), **dt),
            layers.Dropout(v["dropout_2"], **dt),
            *conv(v["filters_3"]),
            layers.Flatten(**dt),
            layers.Dense(v["dense_units"], activation=act, **dt),
            layers.Dense(10, activation="softmax", dtype="float32"),
        ],
        name="mnist_cnn",
    )
    optimizer = keras.optimizers.Adam(learning_rate=v["learning_rate"])
    if mixed_precision == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model
