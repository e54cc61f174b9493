"""Reading an exported .tflite file back: a LiteRT interpreter, and the stored weight kernels with their
sparsity (what the export checks that sparse and quantized files kept)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# TFLite builtin op -> index of its weight operand.
TFLITE_WEIGHT_OPERAND = {
    "FULLY_CONNECTED": 1,
    "CONV_2D": 1,
    "CONV_3D": 1,
    "DEPTHWISE_CONV_2D": 1,
    "TRANSPOSE_CONV": 1,
    "CONV_3D_TRANSPOSE": 1,
    "BATCH_MATMUL": 1,
    "GATHER": 0,
}


def tflite_interpreter(path_or_bytes: str | Path | bytes):
    """A LiteRT interpreter (``ai_edge_litert``, a dependency; ``tf.lite.Interpreter`` is deprecated) with tensors
    allocated."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(path_or_bytes, bytes):
            interpreter = Interpreter(model_content=path_or_bytes)
        else:
            interpreter = Interpreter(model_path=str(path_or_bytes))
    interpreter.allocate_tensors()
    return interpreter


@dataclass(frozen=True)
class TfliteKernel:
    shape: tuple[int, ...]  # the kernel's dense shape
    size: int
    nonzero: int
    sparse: bool  # stored in TFLite's sparse format (read through a DENSIFY op)


def tflite_kernels(interpreter) -> dict[str, TfliteKernel]:
    """{tensor name: kernel} for the constant weight operands of the interpreter's weight ops, read through
    DEQUANTIZE (int8 weights) and DENSIFY (sparse weights: the stored values, the dense shape of its output)."""
    ops = interpreter._get_ops_details()  # the only reader of op operands the interpreter offers
    # a DELEGATE node stands for graph nodes that are still listed with their own operands: skipped
    produced = {int(t): op for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    kernels: dict[str, TfliteKernel] = {}
    seen: set[int] = set()
    for op in ops:
        operand = TFLITE_WEIGHT_OPERAND.get(op["op_name"])
        if operand is None or operand >= len(op["inputs"]):
            continue
        index = shape_index = int(op["inputs"][operand])
        sparse = False
        source = produced.get(index)
        while source is not None and source["op_name"] in ("DEQUANTIZE", "DENSIFY"):
            sparse = sparse or source["op_name"] == "DENSIFY"
            index = int(source["inputs"][0])
            source = produced.get(index)
        if source is not None:
            continue  # computed at run time, not a stored weight
        if index < 0 or index in seen:
            continue
        seen.add(index)
        try:
            values = np.asarray(interpreter.get_tensor(index))
        except ValueError:  # pragma: no cover - tensor without a buffer
            continue
        shape = tuple(int(d) for d in details[shape_index]["shape"])
        kernels[details[index]["name"] or str(index)] = TfliteKernel(
            shape=shape, size=int(np.prod(shape)), nonzero=int(np.count_nonzero(values)), sparse=sparse
        )
    return kernels
