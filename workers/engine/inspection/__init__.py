"""Inspect untrusted model and dataset files before Keras (or numpy's loader) touches them.

Every uploaded file is attacker-controlled. This package reads only *metadata*: zip directories, JSON configs,
HDF5 object headers and .npy headers. It never imports TensorFlow or Keras (it runs in the API process too) and
never deserializes a Keras object, unpickles, follows an HDF5 link or reads tensor data.

Public API::

    inspect_model_file(path, limits) -> ModelInspection   (raises ModelRejected / UnsupportedFile)
    inspect_npz(path, limits) -> {array name: (shape, dtype)}   (raises DataError / UnsupportedFile)
    InspectLimits   every bound, checked from metadata before any data is read

One module per piece, each reviewable alone:

* `limits`: `InspectLimits`.
* `sniff`: what a file is, from its first bytes (anything but a zip or HDF5 file is refused naming what was seen:
  a SavedModel directory, a pickle, TFLite, ...).
* `model`: ``.keras`` (Keras 3 zip: exactly ``config.json``, ``model.weights.h5`` and optionally
  ``metadata.json``; no ``model.weights.npz``, no ``assets/``) and ``.h5`` (legacy Keras HDF5, written by Keras 3
  or tf_keras 2.x: the ``model_config`` and ``training_config`` attributes plus every object in the file).
* `ziparchive`: members plainly named, unique, unencrypted, stored or deflated, within the size, total-size and
  compression-ratio limits, read without ever exceeding a limit.
* `hdf5`: the signature is checked; the file is opened read-only with locking off and the default driver; every
  link is examined without being followed: only hard links, each object reached once (no soft, external or
  user-defined links, no link cycles or aliases: Keras writes none); datasets must be stored in the file (no
  external raw storage, no virtual datasets), numeric, with known filters, and within the element limits; all
  judged from object headers before any data is read.
* `jsontext`: every JSON document is parsed under a size and nesting-depth limit and scanned in time linear in its
  length.
* `config` and `allowlist`: the model config (and the compile / training config) is walked completely. Every dict
  that carries ``class_name``, ``module`` or ``registered_name`` is a serialized object and must be a stock Keras
  class from the allow-list, under one of its stock modules, with no registered name other than its own;
  serialized functions may only name stock losses, metrics and activations; ``__lambda__`` and other special
  objects that execute or import anything are refused; activation strings must be stock names; no string anywhere
  may look like a file path or URL (file-backed layer state).
* `npz`: a dataset archive of plain ``NAME.npy`` members whose headers declare a numeric dtype and a shape within
  the limits, and whose sizes match those headers exactly (so no pickle can hide in them).
* `isolated`: the same inspections in a child process under a deadline (import it on its own: it is not
  re-exported here, so that ``python -m`` can run it as the child).

Load cost: Keras rebuilds a Sequential model after every layer it adds while loading it, so its load time grows
with the square of its layer count; `ModelInspection.sequential_layers` counts the layers of all Sequential models
in the config so that a caller can bound it before loading (the service: limits.max_sequential_layers).

Callers: load a file that passed according to ``ModelInspection.format`` (give it that extension), never by the
uploaded name. h5py parses attacker bytes in C; where possible run inspection in the sandboxed worker too.
"""

from workers.engine.inspection.limits import InspectLimits
from workers.engine.inspection.model import ModelInspection, inspect_model_file
from workers.engine.inspection.npz import inspect_npz

__all__ = ["InspectLimits", "ModelInspection", "inspect_model_file", "inspect_npz"]
