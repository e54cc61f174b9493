"""Structured pruning with real model surgery: remove whole Dense units and Conv filters, rebuild a smaller model.

After Torch-Pruning, scaled down to Keras 3 Sequential and functional models, one module per stage:

1. `handlers`: one handler per layer type says how channel ids move through the layer and how its weights are
   sliced (Dense, Conv1D/2D/3D, Depthwise, Separable, BatchNormalization, Flatten, merges, pooling, ...).
2. `graph`: trace channels through the model once (inputs to outputs); layers without a handler, shared layers,
   nested models and model outputs are barriers whose channels are never removed.
3. `groups` and `scoring`: producers coupled by merges form groups; each member scores its units with the
   criterion (`importance`), BatchNorm-aware for weight criteria, on calibration data for data criteria; scores
   are normalized per member and summed per class; scope "layer" or "global" decides each group's count.
4. `rebuild`: new layer configs -> `from_config` -> weights sliced by the handlers, and the removed channels'
   mean contribution folded back into their consumers (compensation).
5. `prune`: the facade, `structured_prune` (selection through `selection.Selector`) and `masked_reference`.
"""

from workers.engine.structured.groups import SCOPES, keep_count
from workers.engine.structured.handlers import HANDLERS, POINTWISE_ACTIVATIONS, handler_for
from workers.engine.structured.prune import PrunedGroup, StructuredReport, masked_reference, structured_prune

__all__ = [
    "HANDLERS",
    "POINTWISE_ACTIVATIONS",
    "SCOPES",
    "PrunedGroup",
    "StructuredReport",
    "handler_for",
    "keep_count",
    "masked_reference",
    "structured_prune",
]
