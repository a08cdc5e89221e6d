"""Every lever of the search, as plain data: names, types, seed defaults, choices and ranges.

The one table a new hyperparameter is added to (and one use in ``model.cnn.build_model``). Plain data, no
TensorFlow, so that experiment and space files are validated before anything heavy loads. Defaults reproduce
the seed baseline exactly.
"""

from __future__ import annotations

# name -> (python type, default). Defaults reproduce the seed baseline exactly.
HP_DEFAULTS: dict[str, tuple[type, object]] = {
    "learning_rate": (float, 1e-3),  # the optimizer's step size (the peak when a schedule is on)
    "filters_1": (int, 128),  # filters of the first convolution (deep: of the first block)
    "filters_2": (int, 64),  # filters of the second convolution (deep: of the second block)
    "filters_3": (int, 64),  # filters of the third convolution (seed blocks only)
    "dropout_1": (float, 0.5),  # dropout after the first pooling
    "dropout_2": (float, 0.5),  # dropout after the second pooling
    "dense_units": (int, 128),  # units of the dense layer before the output
    "activation": (str, "relu"),  # the activation of every hidden layer
    "batch_norm": (bool, False),  # batch normalisation after each convolution
    "batch_size": (int, 16),  # digits per training step
    # architecture
    "conv_blocks": (str, "seed"),  # seed: the baseline's three convolutions; deep: two batch-normalised blocks
    "kernel_size": (int, 3),  # the convolutions' kernel, k x k
    "pooling": (str, "flatten"),  # how the feature maps reach the dense head: flatten or global average pooling
    # optimisation
    "optimizer": (str, "adam"),  # adam, adamw or sgd (with Nesterov momentum 0.9)
    "weight_decay": (float, 0.0),  # decoupled weight decay, in every optimizer
    "lr_schedule": (str, "constant"),  # how the learning rate moves over the epochs
    "warmup_fraction": (float, 0.0),  # cosine: share of the steps spent ramping up to learning_rate
    "label_smoothing": (float, 0.0),  # share of each target spread over the other classes
    # augmentation, training only (Keras preprocessing layers are identities at inference)
    "rotation": (float, 0.0),  # random rotation while training, in degrees either way
    "translation": (float, 0.0),  # random shift while training, a fraction of the image either way
    "zoom": (float, 0.0),  # random zoom while training, a fraction in or out
}
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "swish", "silu", "tanh", "sigmoid", "leaky_relu", "mish", "softplus")
CHOICES: dict[str, tuple[str, ...]] = {
    "activation": ACTIVATIONS,
    "conv_blocks": ("seed", "deep"),
    "pooling": ("flatten", "global_avg"),
    "optimizer": ("adam", "adamw", "sgd"),
    "lr_schedule": ("constant", "cosine", "one_cycle", "plateau"),
}
# name -> (low, high, low inclusive, high inclusive) for float levers
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "dropout_1": (0.0, 1.0, True, False),
    "dropout_2": (0.0, 1.0, True, False),
    "weight_decay": (0.0, 1.0, True, True),
    "warmup_fraction": (0.0, 0.5, True, True),
    "label_smoothing": (0.0, 0.5, True, True),
    "rotation": (0.0, 90.0, True, True),
    "translation": (0.0, 0.5, True, True),
    "zoom": (0.0, 0.5, True, True),
}
KERNEL_SIZES = (1, 3, 5, 7)
TUNER_BOOKKEEPING_PREFIX = "tuner/"  # Hyperband's tuner/epochs, tuner/trial_id, ...


def hp_value(hp, name: str):
    """Register ``name`` on ``hp`` with its baseline default (unless the space defines it) and return it."""
    if name in hp.values:
        return hp.get(name)
    if any(declared.name == name for declared in hp.space):  # conditional, its condition unmet: not registered
        return HP_DEFAULTS[name][1]                           # again (it would become an unconditional Fixed)
    return hp.Fixed(name, HP_DEFAULTS[name][1])


def value_fault(name: str, v) -> str | None:
    """What is wrong with ``v`` as the value of lever ``name`` beyond its type, or None."""
    if name in CHOICES and v not in CHOICES[name]:
        return f"unknown {name} {v!r} (known: {', '.join(CHOICES[name])})"
    if name in RANGES:
        lo, hi, lo_in, hi_in = RANGES[name]
        if not ((lo <= v if lo_in else lo < v) and (v <= hi if hi_in else v < hi)):
            return f"must be in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'} (got {v})"
    if name == "kernel_size" and v not in KERNEL_SIZES:
        return f"must be one of {', '.join(map(str, KERNEL_SIZES))} (got {v})"
    if name == "learning_rate" and v <= 0:
        return f"must be > 0 (got {v})"
    return None
