"""The ensemble's MLflow model, as "models from code": this file is copied into every ensemble model.

It imports nothing from mnist-exp, so a registered ensemble loads wherever MLflow and Keras do
(``mnist-exp predict``, ``mlflow models serve``, ``mlflow.pyfunc.load_model``). Its members are the
Keras models in the artifacts ``member-0``, ``member-1``, …; ``model_config["weights"]`` are their
weights. The output is the weighted mean of the members' class probabilities: the same input and output
as a single model's.
"""

from __future__ import annotations

import mlflow
import numpy as np


class MeanOfMembers(mlflow.pyfunc.PythonModel):
    """Weighted mean of the members' class probabilities."""

    _skip_type_hint_validation = True  # the input is a tensor (digits x 28 x 28 x 1), checked by the signature

    def load_context(self, context):
        import mlflow.keras

        weights = [float(w) for w in context.model_config["weights"]]
        self.members = [(mlflow.keras.load_model(context.artifacts[f"member-{i}"]), w) for i, w in enumerate(weights)]
        self.total = sum(weights)

    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input, dtype=np.float32)
        out = None
        for model, weight in self.members:
            probs = np.asarray(model.predict_on_batch(x) if len(x) <= 1024 else model.predict(x, batch_size=256, verbose=0))
            out = weight * probs if out is None else out + weight * probs
        return out / self.total


mlflow.models.set_model(MeanOfMembers())
