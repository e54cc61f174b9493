"""The allow-list of stock Keras objects, and the names and patterns a model config may (not) carry.

Pure data: `workers.engine.inspection.config` walks a config against it. A class is accepted only under one of the
modules listed for it here; `REFUSED_CLASS_REASONS` gives the refusals that have a reason of their own.
"""

from __future__ import annotations

import re

LAYER_MODULES = (None, "keras.layers")
LAYER_CLASSES = """
    InputLayer Dense EinsumDense Embedding
    Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose
    Convolution1D Convolution2D Convolution3D Convolution1DTranspose Convolution2DTranspose Convolution3DTranspose
    DepthwiseConv1D DepthwiseConv2D SeparableConv1D SeparableConv2D SeparableConvolution1D SeparableConvolution2D
    BatchNormalization LayerNormalization GroupNormalization UnitNormalization
    Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianDropout GaussianNoise AlphaDropout
    ActivityRegularization Masking Identity
    Flatten Reshape Permute RepeatVector
    MaxPooling1D MaxPooling2D MaxPooling3D MaxPool1D MaxPool2D MaxPool3D
    AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D
    GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D
    GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D
    GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D
    ZeroPadding1D ZeroPadding2D ZeroPadding3D Cropping1D Cropping2D Cropping3D
    UpSampling1D UpSampling2D UpSampling3D
    Activation ReLU LeakyReLU PReLU ELU Softmax
    Add Subtract Multiply Average Maximum Minimum Concatenate Dot
    Rescaling Normalization Resizing CenterCrop
    StringLookup IntegerLookup TextVectorization Hashing
    SimpleRNN LSTM GRU MultiHeadAttention Attention AdditiveAttention
""".split()
CONTAINER_MODULES = {
    "Functional": (None, "keras", "keras.models", "keras.src.models.functional", "keras.src.engine.functional"),
    "Sequential": (None, "keras", "keras.models", "keras.src.models.sequential", "keras.src.engine.sequential"),
    "Model": (None, "keras", "keras.models", "keras.src.models.model", "keras.src.engine.training"),
}
INITIALIZER_CLASSES = """
    Constant Zeros Ones Identity IdentityInitializer Orthogonal OrthogonalInitializer
    GlorotNormal GlorotUniform HeNormal HeUniform LecunNormal LecunUniform
    RandomNormal RandomUniform TruncatedNormal VarianceScaling
""".split()
REGULARIZER_CLASSES = "L1 L2 L1L2 OrthogonalRegularizer".split()
CONSTRAINT_CLASSES = "MaxNorm MinMaxNorm NonNeg UnitNorm".split()
OPTIMIZER_CLASSES = """
    SGD Adam AdamW RMSprop Adagrad Adadelta Adamax Nadam Ftrl Lion Adafactor Lamb LossScaleOptimizer
""".split()
SCHEDULE_CLASSES = """
    ExponentialDecay PiecewiseConstantDecay PolynomialDecay InverseTimeDecay CosineDecay CosineDecayRestarts
""".split()
LOSS_CLASSES = """
    BinaryCrossentropy BinaryFocalCrossentropy CategoricalCrossentropy CategoricalFocalCrossentropy
    SparseCategoricalCrossentropy MeanSquaredError MeanAbsoluteError MeanAbsolutePercentageError
    MeanSquaredLogarithmicError Huber LogCosh KLDivergence Poisson Hinge SquaredHinge CategoricalHinge
    CosineSimilarity
""".split()
METRIC_CLASSES = """
    Accuracy BinaryAccuracy CategoricalAccuracy SparseCategoricalAccuracy TopKCategoricalAccuracy
    SparseTopKCategoricalAccuracy AUC Precision Recall Mean F1Score FBetaScore R2Score IoU MeanIoU
    TruePositives TrueNegatives FalsePositives FalseNegatives
    PrecisionAtRecall RecallAtPrecision SensitivityAtSpecificity SpecificityAtSensitivity
    MeanSquaredError MeanAbsoluteError RootMeanSquaredError MeanAbsolutePercentageError
    MeanSquaredLogarithmicError BinaryCrossentropy CategoricalCrossentropy SparseCategoricalCrossentropy
    KLDivergence Poisson Hinge SquaredHinge CategoricalHinge CosineSimilarity LogCoshError MeanMetricWrapper
""".split()
DTYPE_POLICY_MODULES = {
    "DTypePolicy": (None, "keras", "keras.dtype_policies"),
    "FloatDTypePolicy": (None, "keras", "keras.dtype_policies"),
    "Policy": (None, "keras.mixed_precision"),
}


def _build_allow_list() -> dict[str, dict[str | None, str]]:
    """class_name -> {allowed module -> category}. Earlier entries win for module None (no module key)."""
    table: dict[str, dict[str | None, str]] = {}

    def add(classes, modules, category):
        for name in classes:
            for module in modules:
                table.setdefault(name, {}).setdefault(module, category)

    add(LAYER_CLASSES, LAYER_MODULES, "layer")
    for name, modules in CONTAINER_MODULES.items():
        add([name], modules, "model")
    add(INITIALIZER_CLASSES, (None, "keras.initializers"), "initializer")
    add(REGULARIZER_CLASSES, (None, "keras.regularizers"), "regularizer")
    add(CONSTRAINT_CLASSES, (None, "keras.constraints"), "constraint")
    add(OPTIMIZER_CLASSES, (None, "keras.optimizers"), "optimizer")
    add([f"Custom>{c}" for c in OPTIMIZER_CLASSES], (None, "keras.optimizers"), "optimizer")  # tf_keras 2.11+
    add(SCHEDULE_CLASSES, (None, "keras.optimizers.schedules"), "schedule")
    add(LOSS_CLASSES, (None, "keras.losses"), "loss")
    add(METRIC_CLASSES, (None, "keras.metrics"), "metric")
    for name, modules in DTYPE_POLICY_MODULES.items():
        add([name], modules, "dtype_policy")
    return table


ALLOWED_CLASSES = _build_allow_list()

ACTIVATION_NAMES = frozenset(
    """
    linear relu relu6 leaky_relu elu selu celu gelu silu swish mish sigmoid hard_sigmoid log_sigmoid
    softmax log_softmax softplus softsign tanh hard_tanh tanh_shrink exponential hard_silu hard_swish glu
    sparse_plus squareplus soft_shrink hard_shrink sparsemax sparse_sigmoid threshold
""".split()
)
LOSS_FUNCTION_NAMES = frozenset(
    """
    sparse_categorical_crossentropy categorical_crossentropy binary_crossentropy binary_focal_crossentropy
    categorical_focal_crossentropy mean_squared_error mean_absolute_error mean_absolute_percentage_error
    mean_squared_logarithmic_error mse mae mape msle huber log_cosh logcosh kl_divergence kld
    kullback_leibler_divergence poisson hinge squared_hinge categorical_hinge cosine_similarity
""".split()
)
METRIC_FUNCTION_NAMES = frozenset(
    """
    accuracy acc binary_accuracy categorical_accuracy sparse_categorical_accuracy
    top_k_categorical_accuracy sparse_top_k_categorical_accuracy crossentropy ce bce
""".split()
)
STOCK_FUNCTION_NAMES = ACTIVATION_NAMES | LOSS_FUNCTION_NAMES | METRIC_FUNCTION_NAMES
# What Keras writes for a stock function: {"module": "builtins", "class_name": "function", "config": NAME, ...}.
FUNCTION_MODULES = frozenset({"builtins", "keras.activations", "keras.losses", "keras.metrics"})
OPTIMIZER_NAMES = frozenset(c.lower() for c in OPTIMIZER_CLASSES if c != "LossScaleOptimizer")
# Strings the compile / training config may name (resolved by Keras inside its losses/metrics/optimizers).
COMPILE_NAMES = {
    "loss": LOSS_FUNCTION_NAMES | {c.lower() for c in LOSS_CLASSES} | set(LOSS_CLASSES),
    "metrics": STOCK_FUNCTION_NAMES | {c.lower() for c in METRIC_CLASSES} | set(METRIC_CLASSES),
    "optimizer": OPTIMIZER_NAMES | set(OPTIMIZER_CLASSES),
}
COMPILE_NAMES["weighted_metrics"] = COMPILE_NAMES["metrics"]

# Special objects of the Keras 3 serializer that only carry data.
DATA_OBJECTS = frozenset({"__keras_tensor__", "__numpy__", "__tensor__", "__ellipsis__", "__slice__"})
NUMERIC_DTYPE_NAMES = frozenset(
    """
    bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 bfloat16 float32 float64
""".split()
)

# Classes refused with a reason of their own (anything else off the allow-list is "not a stock Keras class").
REFUSED_CLASS_REASONS = {
    "Lambda": "Lambda layers carry Python code",
    "TFOpLambda": "TFOpLambda layers call TensorFlow functions named in the file",
    "SlicingOpLambda": "SlicingOpLambda layers call TensorFlow functions named in the file",
    "TFSMLayer": "TFSMLayer loads a TensorFlow SavedModel from a path",
    "TorchModuleWrapper": "TorchModuleWrapper carries a pickled PyTorch module",
    "JaxLayer": "JaxLayer wraps arbitrary JAX functions",
    "FlaxLayer": "FlaxLayer wraps arbitrary Flax modules",
    "__lambda__": "a serialized Python lambda carries Python code",
    "__typespec__": "TypeSpec objects resolve classes named in the file",
    "__bytes__": "raw byte objects have no place in a model config",
}

# What looks like a file path or URL (file-backed layer state, downloads).
PATH_LIKE = re.compile(r"^(?:/|~|\\\\|[A-Za-z]:[\\/])|://|(?:^|[\\/])\.\.(?:[\\/]|$)|^file:", re.IGNORECASE)
# "package>Name": how register_keras_serializable names custom objects; Keras resolves such strings anywhere.
REGISTERED_NAME = re.compile(r"^[\w.\-]+>[\w.\-]+$")


def is_path_like(text: str) -> bool:
    return bool(PATH_LIKE.search(text))
