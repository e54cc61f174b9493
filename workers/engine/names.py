"""The stock loss and metric names the engine trains and evaluates with, and stock layer names it reads alike.

Plain Python (no Keras import), so the job spec (`workers.spec`) validates against the same sets that
`model_io` compiles with: one list, read by the contract and by the engine. `INFERENCE_IDENTITY_LAYERS` is read
by `model_io` (which activation a model ends with) and by the structured handlers (layers channels pass through).
"""

from __future__ import annotations

ALLOWED_LOSSES = frozenset(
    {
        "sparse_categorical_crossentropy",
        "categorical_crossentropy",
        "binary_crossentropy",
        "mse",
        "mean_squared_error",
        "mae",
        "mean_absolute_error",
        "huber",
    }
)
ALLOWED_METRICS = frozenset(
    {
        "accuracy",
        "sparse_categorical_accuracy",
        "categorical_accuracy",
        "binary_accuracy",
        "top_k_categorical_accuracy",
        "sparse_top_k_categorical_accuracy",
        "mse",
        "mae",
        "mean_squared_error",
        "mean_absolute_error",
        "root_mean_squared_error",
    }
)

__all__ = ["ALLOWED_LOSSES", "ALLOWED_METRICS", "INFERENCE_IDENTITY_LAYERS"]

# Layers that drop, perturb or regularize values in training and pass them through unchanged at inference.
INFERENCE_IDENTITY_LAYERS = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
)
