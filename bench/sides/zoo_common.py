"""What both sides of the zoo measure the same way: held-out accuracy and the sparsity of the prunable weights."""

from __future__ import annotations

import numpy as np

DISCONNECTED = 0.98  # a kernel sparser than this counts as a disconnected layer


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a batched predict (inference mode; no compiled metric involved)."""
    probs = model.predict(x, batch_size=250, verbose=0)
    return float(np.mean(np.argmax(probs, axis=-1) == y))


def _kernel(layer):
    """The weight both tools prune: `kernel` (Dense, Conv; Keras 3 DepthwiseConv2D) or `depthwise_kernel`
    (tf_keras DepthwiseConv2D)."""
    for name in ("kernel", "depthwise_kernel"):
        w = getattr(layer, name, None)
        if w is not None:
            return np.asarray(w.numpy() if hasattr(w, "numpy") else w)
    return None


def sparsity_report(model) -> dict:
    """Zeros among the kernels of the Dense and convolution layers: overall ("sparsity"), per layer, and the
    layers over 98 % sparse ("disconnected")."""
    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        w = _kernel(layer)
        if w is None:
            continue
        z = int(np.sum(w == 0))
        per_layer[layer.name] = round(z / w.size, 4)
        zeros, total = zeros + z, total + w.size
    over = sorted(name for name, s in per_layer.items() if s > DISCONNECTED)
    return {
        "sparsity": zeros / total if total else 0.0,
        "prunable_weights": int(total),
        "layer_sparsity": per_layer,
        "layers_over_98": len(over),
        "disconnected": over,
    }
