"""/v1/preflight: what the engine can prune in a model and what a spec would leave of it, before any compute."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.deps import Preflight, Who
from service.schemas import PreflightRead, problem_responses

router = APIRouter(prefix="/v1", tags=["preflight"])

EXAMPLE_SPEC = {
    "steps": [
        {"kind": "prune", "method": "magnitude", "target_sparsity": 0.8, "epochs": 2},
        {"kind": "structured", "keep_ratio": 0.5, "round_to": 8},
    ]
}
EXAMPLE_ANSWER = {
    "model": {
        "name": "residual",
        "class": "Functional",
        "file": "residual.keras",
        "bytes": 116475,
        "format": "keras",
        "saved_loss": "sparse_categorical_crossentropy",
    },
    "layers": [
        {
            "name": "stem",
            "class": "Conv2D",
            "params": 448,
            "nonzero": 432,
            "prunable_params": 432,
            "macs": 43200,
            "prunable": True,
            "reason": None,
            "spared": None,
            "methods": ["magnitude", "threshold", "n_m", "block", "structured"],
            "group": "g1",
            "structured_reason": None,
        },
        {
            "name": "stem_bn",
            "class": "BatchNormalization",
            "params": 64,
            "nonzero": 64,
            "prunable_params": 0,
            "macs": 0,
            "prunable": False,
            "reason": "no prunable kernel: BatchNormalization holds gamma, beta, "
            "moving_mean, moving_variance, which unstructured pruning never zeroes; "
            "structured pruning reslices it with "
            "group g1",
            "spared": None,
            "methods": [],
            "group": "g1",
            "structured_reason": None,
        },
        {
            "name": "out",
            "class": "Dense",
            "params": 100,
            "nonzero": 96,
            "prunable_params": 96,
            "macs": 96,
            "prunable": False,
            "reason": "spared: output layer: a global magnitude step spares it (the output layers "
            "hold at most 10% of the pool); scope 'layer' or naming it in layers.include prunes it",
            "spared": None,
            "methods": ["magnitude", "threshold", "n_m", "block"],
            "group": None,
            "structured_reason": "it reaches the model output of 'out'",
        },
    ],
    "groups": [
        {
            "id": "g1",
            "layers": ["stem", "conv_b1", "conv_b2"],
            "dependents": [
                "stem_bn",
                "stem_relu",
                "conv_a1",
                "bn_b1",
                "add1",
                "relu1",
                "conv_a2",
                "bn_b2",
                "add2",
                "relu2",
                "up",
                "head_conv",
            ],
            "units": 16,
            "removable_units": 16,
            "selected": True,
        }
    ],
    "totals": {
        "layers": 17,
        "prunable_layers": 6,
        "params": 11188,
        "trainable": 11092,
        "nonzero": 11088,
        "prunable_params": 10896,
        "macs": 1014432,
        "flops": 2028864,
        "effective_macs": 1014432,
        "unknown_macs": [],
        "groups": 4,
        "size_bytes": 44752,
        "gzip_bytes": 40851,
    },
    "steps": [
        {
            "index": 0,
            "kind": "prune",
            "estimate": "magnitude pruning applied once to the current weights",
            "params": 11188,
            "nonzero": 2371,
            "sparsity": 0.8,
            "macs": 1014432,
            "effective_macs": 200606,
            "size_bytes": 44752,
            "gzip_bytes": 11022,
            "spared": ["out/kernel"],
        },
        {
            "index": 1,
            "kind": "structured",
            "estimate": "units removed by l1 on the current weights",
            "params": 3892,
            "nonzero": 936,
            "sparsity": 0.775,
            "macs": 345376,
            "effective_macs": 74966,
            "size_bytes": 15568,
            "gzip_bytes": 4393,
            "groups_pruned": 4,
        },
    ],
    "task": {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
    "notes": [
        "step estimates apply each step once to the current weights, without training: parameters, non-zeros "
        "and MACs follow the targets; which weights go will differ"
    ],
    "wall_time_s": 1.3,
}
PREFLIGHT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model"],
                    "properties": {
                        "model": {
                            "type": "string",
                            "format": "binary",
                            "description": "The trained model: a Keras 3 `.keras` file or a legacy `.h5` file.",
                        },
                        "spec": {
                            "$ref": "#/components/schemas/JobSpec",
                            "description": "Optional JobSpec (JSON): the job's checks and, per step, what it would "
                            "leave.",
                        },
                    },
                },
                "encoding": {"spec": {"contentType": "application/json"}},
                "examples": {
                    "model_only": {"summary": "Which layers can be pruned, and how", "value": {}},
                    "with_spec": {
                        "summary": "And what this spec would leave, step by step",
                        "value": {"spec": EXAMPLE_SPEC},
                    },
                },
            }
        },
    },
}


@router.post(
    "/preflight",
    response_model=PreflightRead,
    openapi_extra=PREFLIGHT_OPENAPI,
    summary="Inspect a model before compressing it",
    description="Multipart upload of `model` and an optional `spec`; answers in seconds, with no training: one row "
    "per layer (parameters, MACs, whether and how it can be pruned, its structured group), the totals, "
    "and with a spec the parameters, non-zeros, MACs and size each step would leave. A model (or spec) "
    "a job would refuse is refused here with the same status and message. Nothing is stored.",
    responses={
        **problem_responses(401, 413, 415, 422, 507),
        200: {"content": {"application/json": {"example": EXAMPLE_ANSWER}}},
    },
)
async def preflight(who: Who, service: Preflight, request: Request) -> PreflightRead:
    return PreflightRead.model_validate(await service.preflight(request))
