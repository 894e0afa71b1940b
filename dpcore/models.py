"""The model zoo: one explicit registry shared by training and profiling.

Every model is a backbone followed by DeepProfiler's head: global average
pooling named ``pool5`` and a softmax layer named ``ClassProb``, so layer names
in users' configs (``feature_layer``) keep meaning what they meant.

The EfficientNet backbones are Keras' own, with its built-in input
preprocessing (``Rescaling``, ``Normalization``) replaced by identities: the
``efficientnet==1.1.1`` package DeepProfiler used has none, its layers
otherwise carry the same names (``stem_conv``, ``block6a_activation``,
``top_activation`` ...), and Keras' explicit ``*_pad`` layers pad exactly like
that package's ``padding="same"``. Checkpoints therefore load by layer name and
give DeepProfiler's numbers.

This module imports TensorFlow/Keras; ``import dpcore`` does not import it.
"""

from __future__ import annotations

import difflib
import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dpcore.config import DEFAULT_FEATURE_DIM, MODEL_CONV_BLOCKS
from dpcore.tensorflow_runtime import load_tensorflow

tf = load_tensorflow()  # before Keras, which would load TensorFlow loudly
import keras  # noqa: E402

logger = logging.getLogger(__name__)

FEATURE_POOL = "pool5"
CLASSIFIER = "ClassProb"
L2_KERNEL_REGULARIZATION = 1e-5


class ModelError(ValueError):
    """A model, layer or weights file cannot be used; the message says what exists."""


_EFFICIENTNETS = {
    0: keras.applications.EfficientNetB0, 1: keras.applications.EfficientNetB1,
    2: keras.applications.EfficientNetB2, 3: keras.applications.EfficientNetB3,
    4: keras.applications.EfficientNetB4, 5: keras.applications.EfficientNetB5,
    6: keras.applications.EfficientNetB6, 7: keras.applications.EfficientNetB7,
}
_RESNETS = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101,
            152: keras.applications.ResNet152}


def _without_preprocessing(model: keras.Model) -> keras.Model:
    """Clone a functional model with Rescaling/Normalization layers turned into identities."""
    def clone(layer):
        if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)):
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(layer.get_config())
    return keras.models.clone_model(model, clone_function=clone)


def efficientnet_backbone(input_shape: tuple[int, int, int], conv_blocks: int, feature_dim: int) -> keras.Model:
    if conv_blocks not in _EFFICIENTNETS:
        raise ModelError(f"efficientnet conv_blocks must be 0-7 (B0-B7), got {conv_blocks}")
    base = _EFFICIENTNETS[conv_blocks](include_top=False, weights=None, input_shape=input_shape)
    return _without_preprocessing(base)


def resnet_backbone(input_shape: tuple[int, int, int], conv_blocks: int, feature_dim: int) -> keras.Model:
    if conv_blocks not in _RESNETS:
        raise ModelError(f"resnet conv_blocks must be 50, 101 or 152, got {conv_blocks}")
    return _RESNETS[conv_blocks](include_top=False, weights=None, input_shape=input_shape)


def inception_resnet_v2_backbone(input_shape: tuple[int, int, int], conv_blocks: int,
                                 feature_dim: int) -> keras.Model:
    if min(input_shape[:2]) < 75:
        raise ModelError(f"inception_resnet_v2 needs inputs of at least 75x75, got {input_shape[:2]}")
    return keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=input_shape)


def cnn_backbone(input_shape: tuple[int, int, int], conv_blocks: int, feature_dim: int) -> keras.Model:
    """DeepProfiler's ``cnn`` plugin: ``conv_blocks`` blocks of 3x3 convolution (8 * 2**i filters), batch
    normalisation, ReLU and 2x2 max-pooling, then flattened into a ReLU layer of ``feature_dim`` units
    named ``features`` (its feature layer; there is no ``pool5``)."""
    if conv_blocks < 1:
        raise ModelError(f"cnn needs train.model.params.conv_blocks of at least 1, got {conv_blocks}")
    inputs = keras.Input(input_shape, name="input")
    x = inputs
    for block in range(conv_blocks):
        x = keras.layers.Conv2D(8 * 2 ** block, 3, padding="same", name=f"conv{block + 1}")(x)
        x = keras.layers.BatchNormalization(name=f"conv{block + 1}_bn")(x)
        x = keras.layers.Activation("relu", name=f"conv{block + 1}_activation")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"conv{block + 1}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    features = keras.layers.Dense(feature_dim, activation="relu", name="features")(x)
    return keras.Model(inputs, features, name="cnn")


MODEL_REGISTRY: dict[str, Callable[[tuple[int, int, int], int, int], keras.Model]] = {
    "efficientnet": efficientnet_backbone,
    "resnet": resnet_backbone,
    "inception_resnet_v2": inception_resnet_v2_backbone,
    "cnn": cnn_backbone,
}
assert set(MODEL_REGISTRY) == set(MODEL_CONV_BLOCKS), "config vocabulary and registry must agree"


def available_models() -> list[str]:
    return sorted(MODEL_REGISTRY)


def backbone(name: str, input_shape: tuple[int, int, int], conv_blocks: int = 0,
             feature_dim: int = DEFAULT_FEATURE_DIM) -> keras.Model:
    if name not in MODEL_REGISTRY:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    with warnings.catch_warnings():
        # Keras warns that ImageNet models "usually expect 1 or 3 input channels"; Cell Painting has 5.
        warnings.filterwarnings("ignore", message="This model usually expects")
        return MODEL_REGISTRY[name](tuple(input_shape), conv_blocks, feature_dim)


def classifier(name: str, input_shape: tuple[int, int, int], num_classes: int, conv_blocks: int = 0,
               regularize: bool = False, feature_dim: int = DEFAULT_FEATURE_DIM) -> keras.Model:
    """Backbone + DeepProfiler's head: ``pool5`` (global average pooling; not after a backbone that ends in
    a vector, as the cnn's ``features``) and the softmax ``ClassProb``."""
    base = backbone(name, input_shape, conv_blocks, feature_dim)
    if regularize:
        # A regularizer set on a built layer is never applied (Keras creates the penalty when it builds
        # the layer): set it in each layer's config and rebuild, as DeepProfiler rebuilds its model from JSON.
        def with_l2(layer):
            config = layer.get_config()
            if "kernel_regularizer" in config:
                config["kernel_regularizer"] = keras.regularizers.L2(L2_KERNEL_REGULARIZATION)
            return layer.__class__.from_config(config)
        base = keras.models.clone_model(base, clone_function=with_l2)
    features = base.output
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name=FEATURE_POOL)(features)
    regularizer = keras.regularizers.L2(L2_KERNEL_REGULARIZATION) if regularize else None
    # float32 even under a mixed-precision policy: a softmax in float16 saturates (Keras' own advice).
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name=CLASSIFIER,
                                       kernel_regularizer=regularizer, dtype="float32")(features)
    return keras.Model(base.input, probabilities, name=f"{name}_classifier")


def layer_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers]


def feature_extractor(model: keras.Model, layer_name: str) -> keras.Model:
    """A model from the input to ``layer_name``, its output mean-pooled over space to a vector."""
    names = layer_names(model)
    if layer_name not in names:
        close = difflib.get_close_matches(layer_name, names, n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ModelError(f"profile.feature_layer {layer_name!r} is not a layer of {model.name}{hint}")
    output = model.get_layer(layer_name).output
    if len(output.shape) == 4:
        output = keras.layers.GlobalAveragePooling2D(name=f"{layer_name}_spatial_mean")(output)
    elif len(output.shape) != 2:
        raise ModelError(f"layer {layer_name!r} has output shape {output.shape}; expected an image or a vector")
    return keras.Model(model.input, output, name=f"features_{layer_name}")


@dataclass(frozen=True)
class RepeatChannelSpec:
    """DeepProfiler's ImageNet baseline: each channel as a grey->RGB image of ``input_size``."""

    channels: int
    input_size: int


def repeat_channel_extractor(per_image: keras.Model, spec: RepeatChannelSpec,
                             crop_shape: tuple[int, int]) -> keras.Model:
    """Wrap an RGB feature model: (N, h, w, C) crops in [0, 1] -> (N, C * D) features.

    Every channel is repeated into three, resized to the pretrained input size,
    scaled to [-1, 1] and run through ``per_image``; the per-channel vectors are
    concatenated in channel order.
    """
    inputs = keras.Input((*crop_shape, spec.channels), name="crops")
    channels_first = keras.ops.transpose(inputs, (0, 3, 1, 2))                        # N, C, h, w
    singles = keras.ops.reshape(channels_first, (-1, crop_shape[0], crop_shape[1], 1))  # N*C, h, w, 1
    rgb = keras.ops.repeat(singles, 3, axis=-1)
    resized = keras.layers.Resizing(spec.input_size, spec.input_size, interpolation="bilinear",
                                     name="to_pretrained_size")(rgb)
    scaled = resized * 2.0 - 1.0
    vectors = per_image(scaled)                                                         # N*C, D
    features = keras.ops.reshape(vectors, (-1, spec.channels * vectors.shape[-1]))
    return keras.Model(inputs, features, name="repeat_channel_features")


def predict_function(model: keras.Model, batch_size: int | None = None,
                     xla: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled, frozen forward pass: 1.3-2x a plain ``tf.function`` on CPU.

    The model is traced once and its variables become constants of the graph
    (``convert_variables_to_constants_v2``, what TF Serving and TFLite converters
    do). Grappler can then fold each batch normalisation into the convolution
    before it and fuse convolution, bias and activation into one oneDNN kernel,
    which it cannot do while weights are variables: on 2 CPU cores EfficientNet-B0
    cut at ``block6a_activation`` at batch 32 went from 145 to 190 cells/s in one
    ``bench/bench_model.py`` run (92 to 191 in another); features equal Keras' own
    ``predict_on_batch`` (tests/test_inference.py).

    With ``batch_size`` a call's crops run that many at a time. The graph takes any batch shape, so the
    last part runs as it is: profile calls the model once per site (or a few small sites), and padding a
    site of 67 cells to 96 at batch 32 cost 20% (501 against 628 cells/s, 2026-12-02; the any-shape graph
    runs a full part as fast as one traced for it, 620 against 627). A cell's features depend on its
    batch's shape and its position in the last bits on some CPUs (AMD EPYC: 2e-10 at batch 8, where
    Eigen's matrix kernels treat the last rows of a block apart; Intel machines gave equal bits): runs
    with other bundling agree to float32 rounding, not always bit for bit.

    With ``xla`` the frozen graph is compiled by XLA (for GPUs; see ``dpcore.acceleration``) for exactly
    ``batch_size`` crops, since XLA compiles once per shape: a short part is padded with zeros and the
    padding's outputs dropped. Outputs are float32 whatever precision the model computes in.
    """
    fixed = xla and batch_size is not None
    shape = (batch_size if fixed else None,) + tuple(model.input.shape[1:])
    frozen = frozen_graph(model, shape, xla=xla)

    def run(part: np.ndarray) -> np.ndarray:
        return frozen(tf.convert_to_tensor(part, tf.float32)).numpy()

    if batch_size is None:
        return run
    return lambda batch: in_parts(run, batch, batch_size, pad=fixed)


def in_parts(run_part: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, part_size: int,
             pad: bool = False) -> np.ndarray:
    """``run_part`` over ``batch`` in parts of ``part_size`` rows. The last part runs as it is, or, with
    ``pad`` (a graph compiled for one input shape), filled up with zeros whose outputs are dropped."""
    batch = np.asarray(batch, dtype=np.float32)
    if pad:
        parts = padded_parts(batch, part_size)
    else:
        parts = [np.ascontiguousarray(batch[start:start + part_size]) for start in range(0, len(batch), part_size)]
    outputs = [run_part(part) for part in parts]
    if not outputs:
        return np.zeros((0,), np.float32)
    return (outputs[0] if len(outputs) == 1 else np.concatenate(outputs))[: len(batch)]


def padded_parts(batch: np.ndarray, part_size: int) -> list[np.ndarray]:
    """``batch`` as contiguous float32 parts of ``part_size`` rows, the last filled up with zeros (for a graph
    compiled for one input shape; their outputs are dropped)."""
    batch = np.asarray(batch, dtype=np.float32)
    parts = []
    for start in range(0, len(batch), part_size):
        part = batch[start:start + part_size]
        if len(part) < part_size:
            padded = np.zeros((part_size,) + part.shape[1:], np.float32)
            padded[: len(part)] = part
            part = padded
        parts.append(np.ascontiguousarray(part))
    return parts


def frozen_graph(model: keras.Model, input_shape: tuple[int | None, ...],
                 xla: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """``model(x, training=False)`` traced for ``input_shape`` with its weights as graph constants.

    The returned function holds no reference to the Keras model: weights live
    once, in the graph. Its single output is returned as one tensor.

    The frozen ``ConcreteFunction`` is called through a ``tf.function`` with the
    same signature: called directly, it first tries to bind its arguments to a
    structured signature it does not have, and the failure formats the whole
    input tensor as text (~20 ms of a 32-crop batch, holding the GIL).
    """
    constant = frozen_concrete_function(model, input_shape)
    return tf.function(lambda batch: constant(batch)[0], input_signature=[tf.TensorSpec(input_shape, tf.float32)],
                       jit_compile=xla or None)


def frozen_concrete_function(model: keras.Model, input_shape: tuple[int | None, ...]):
    """``model(x, training=False)`` as float32, traced for ``input_shape``, variables turned into constants:
    a self-contained graph (``.graph.as_graph_def()``), what TF Serving and the OpenVINO converter read."""
    from tensorflow.python.framework.convert_to_constants import (  # noqa: PLC0415
        convert_variables_to_constants_v2,
    )

    traced = tf.function(lambda batch: tf.cast(model(batch, training=False), tf.float32),
                         input_signature=[tf.TensorSpec(input_shape, tf.float32)])
    return convert_variables_to_constants_v2(traced.get_concrete_function())
