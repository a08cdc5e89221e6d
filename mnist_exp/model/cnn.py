"""The CNN as a function of Keras Tuner hyperparameters (``spec.levers``); defaults are the seed baseline."""

from __future__ import annotations

import math

from mnist_exp.spec.levers import HP_DEFAULTS, hp_value

SGD_MOMENTUM = 0.9  # Nesterov
ONE_CYCLE = {"ramp": 0.3, "start_div": 25.0, "end_div": 1e4}  # fastai's one-cycle shape
PLATEAU = {"factor": 0.5, "patience": 2, "min_div": 100.0}  # halve after 2 epochs without progress


def build_model(hp=None, steps_per_execution: int = 1, mixed_precision: str | None = None, steps: int | None = None):
    """Build and compile the CNN. ``build_model()`` is the seed baseline; ``steps`` is the number of
    optimizer steps the model will train (a decaying schedule needs it).

    >>> import keras_tuner as kt
    >>> hp = kt.HyperParameters(); hp.Fixed("learning_rate", 3e-4)
    >>> model = build_model(hp)  # the baseline with another learning rate
    """
    import keras
    import keras_tuner as kt
    from keras import layers

    hp = hp if hp is not None else kt.HyperParameters()
    v = {name: hp_value(hp, name) for name in HP_DEFAULTS}
    # Mixed precision per layer, not Keras's global policy: one process runs many trials. The softmax
    # stays float32 so the loss is computed in float32.
    dt = {"dtype": mixed_precision} if mixed_precision else {}
    body = _deep(v, layers, dt) if v["conv_blocks"] == "deep" else _seed(v, layers, dt)
    head = [layers.Flatten(**dt) if v["pooling"] == "flatten" else layers.GlobalAveragePooling2D(**dt)]
    if v["conv_blocks"] == "deep":
        head.append(layers.Dropout(v["dropout_2"], **dt))
    head += [layers.Dense(v["dense_units"], activation=v["activation"], **dt),
             layers.Dense(10, activation="softmax", dtype="float32")]
    model = keras.Sequential([keras.Input(shape=(28, 28, 1)), *_augmentation(v, layers), *body, *head],
                             name="mnist_cnn")
    optimizer = _optimizer(keras, v, steps)
    if mixed_precision == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=v["label_smoothing"]) if v["label_smoothing"]
            else "categorical_crossentropy")
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], steps_per_execution=steps_per_execution)
    return model


def _augmentation(v, layers) -> list:
    """Constant (black) fill, never reflect: a reflected stroke is a different digit."""
    out = []
    if v["rotation"]:
        out.append(layers.RandomRotation(v["rotation"] / 360.0, fill_mode="constant", fill_value=0.0))
    if v["translation"]:
        out.append(layers.RandomTranslation(v["translation"], v["translation"], fill_mode="constant", fill_value=0.0))
    if v["zoom"]:
        out.append(layers.RandomZoom(v["zoom"], v["zoom"], fill_mode="constant", fill_value=0.0))
    return out


class _Size:
    """Tracks the feature map's side so that a convolution which would shrink it below 3 pads instead
    (kernel 3 on the seed's blocks never does: the seed exactly)."""

    def __init__(self):
        self.side = 28

    def padding(self, k: int, stride: int = 1) -> str:
        if stride == 1 and self.side - k + 1 >= 3:
            self.side = self.side - k + 1
            return "valid"
        self.side = math.ceil(self.side / stride)
        return "same"

    def pool(self):
        self.side //= 2


def _conv(v, layers, dt, size: _Size, filters: int, k: int, stride: int = 1, bn: bool = False) -> list:
    pad = size.padding(k, stride)
    act = v["activation"]
    out = [layers.Conv2D(filters, (k, k), strides=stride, padding=pad, activation=None if bn else act, **dt)]
    return out + [layers.BatchNormalization(**dt), layers.Activation(act, **dt)] if bn else out


def _seed(v, layers, dt) -> list:
    size, k, bn = _Size(), v["kernel_size"], v["batch_norm"]
    out = _conv(v, layers, dt, size, v["filters_1"], k, bn=bn)
    size.pool()
    out += [layers.MaxPooling2D((2, 2), **dt), layers.Dropout(v["dropout_1"], **dt)]
    out += _conv(v, layers, dt, size, v["filters_2"], k, bn=bn)
    size.pool()
    out += [layers.MaxPooling2D((2, 2), **dt), layers.Dropout(v["dropout_2"], **dt)]
    return out + _conv(v, layers, dt, size, v["filters_3"], k, bn=bn)


def _deep(v, layers, dt) -> list:
    """Two blocks of conv-conv-strided conv (5x5, stride 2), batch-normalised, then one more convolution:
    the single network of the "MNIST-CNN-99.75" study. Widths filters_1, filters_2, filters_3."""
    size, k, out = _Size(), v["kernel_size"], []
    for filters, dropout in ((v["filters_1"], v["dropout_1"]), (v["filters_2"], v["dropout_1"])):
        out += _conv(v, layers, dt, size, filters, k, bn=True)
        out += _conv(v, layers, dt, size, filters, k, bn=True)
        out += _conv(v, layers, dt, size, filters, 5, stride=2, bn=True)
        out.append(layers.Dropout(dropout, **dt))
    return out + _conv(v, layers, dt, size, v["filters_3"], k, bn=True)


def _optimizer(keras, v, steps: int | None):
    lr = learning_rate_schedule(keras, v["lr_schedule"], v["learning_rate"], v["warmup_fraction"], steps)
    wd = v["weight_decay"] or None
    name = v["optimizer"]
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=v["weight_decay"])
    # Keras 3 applies weight_decay the decoupled way in every optimizer: adam with decay is AdamW (docs/experiments.md)
    return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd)


def learning_rate_schedule(keras, kind: str, peak: float, warmup: float, steps: int | None):
    """Keras's own schedules (saved and reloaded with the model as built-ins). ``plateau`` is a constant
    rate lowered by a callback (``plateau_callback``)."""
    if kind in ("constant", "plateau") or not steps:
        return peak
    S = keras.optimizers.schedules
    if kind == "cosine":
        ramp = int(steps * warmup)
        if not ramp:
            return S.CosineDecay(peak, decay_steps=steps, alpha=0.0)
        return S.CosineDecay(0.0, decay_steps=max(1, steps - ramp), alpha=0.0, warmup_target=peak, warmup_steps=ramp)
    ramp = max(1, int(steps * ONE_CYCLE["ramp"]))  # one_cycle: up from peak/25, down to peak/1e4
    start = peak / ONE_CYCLE["start_div"]
    return S.CosineDecay(start, decay_steps=max(1, steps - ramp), alpha=1.0 / ONE_CYCLE["end_div"],
                         warmup_target=peak, warmup_steps=ramp)


def plateau_callback(keras, hp, monitor: str):
    """ReduceLROnPlateau for ``lr_schedule: plateau`` (else None)."""
    if hp_value(hp, "lr_schedule") != "plateau":
        return None
    return keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=PLATEAU["factor"], patience=PLATEAU["patience"],
                                             min_lr=hp_value(hp, "learning_rate") / PLATEAU["min_div"], verbose=0)
