"""Generators of hostile model and dataset files, one per attack class, for tests at every level.

Each generator is `generate(tmp_dir, canary) -> Path`: it writes an attack file under `tmp_dir` and returns its
path. Where the attack runs code or writes files, its payload is a harmless canary: it creates the file `canary`
and nothing else, and only if attacker-controlled code actually runs (a Lambda whose bytecode opens the canary, an
`exec` of `open(canary, 'w')`, a `keras.utils.get_file` "download" of a local file into the canary's folder, a
pickle whose reduce opens the canary, ...). Files are built the way an attacker would build them: save a real
model with Keras, then edit config.json in the zip, or rewrite attributes and datasets of a real .h5 with h5py.

Registries (name -> Hostile(generate, error, fragment)):
  MODEL_ATTACKS    uploads of a model file (inspect_model_file; the service answers 4xx)
  DATASET_ATTACKS  uploads of a dataset .npz (inspect_npz)
  HOSTILE          both
`error` is the EngineError subclass inspection must raise; `fragment` a piece of the message naming the thing.
"""

from __future__ import annotations

from tests.hostile.base import LOOP, Hostile, big_config_model, write_zip
from tests.hostile.h5_files import (
    KERNEL,
    h5_external_link,
    h5_external_storage,
    h5_lambda,
    h5_long_soft_link,
    h5_oversized_tensor,
    h5_self_linked_group,
    h5_soft_link_outside,
    h5_training_config_function,
    h5_virtual_dataset,
)
from tests.hostile.keras_files import (
    keras_absolute_member,
    keras_builtins_exec,
    keras_deep_config,
    keras_deep_sequential,
    keras_duplicate_config,
    keras_enable_unsafe_chain,
    keras_escaped_quotes_config,
    keras_escaped_quotes_metadata,
    keras_foreign_module_class,
    keras_get_file,
    keras_huge_layer_config,
    keras_lambda,
    keras_os_system,
    keras_parent_path_member,
    keras_pickle_member,
    keras_registered_name,
    keras_tfsm_layer,
    keras_unknown_custom_object,
    keras_vocabulary_file,
    keras_weights_external_link,
    keras_weights_link_maze,
    keras_weights_self_linked_group,
    keras_zip_bomb,
)
from tests.hostile.other_files import (
    npz_bomb,
    npz_object_array,
    npz_oversized_shape,
    npz_parent_path_member,
    npz_pickle_file,
    pickle_model,
    saved_model_dir,
    tflite_model,
)
from workers.engine.errors import DataError, ModelRejected, UnsupportedFile

__all__ = [
    "DATASET_ATTACKS",
    "HOSTILE",
    "MODEL_ATTACKS",
    "Hostile",
    "big_config_model",
    "keras_deep_sequential",
    "write_zip",
]

MODEL_ATTACKS: dict[str, Hostile] = {
    "keras_lambda": Hostile(keras_lambda, ModelRejected, "layer 'lambda_1' (Lambda) is not allowed"),
    "keras_builtins_exec": Hostile(keras_builtins_exec, ModelRejected, "'builtins.exec'"),
    "keras_os_system": Hostile(keras_os_system, ModelRejected, "'os.system'"),
    "keras_foreign_module_class": Hostile(keras_foreign_module_class, ModelRejected, "module 'antigravity'"),
    "keras_registered_name": Hostile(keras_registered_name, ModelRejected, "registered_name 'keras_hub>Dense'"),
    "keras_get_file": Hostile(keras_get_file, ModelRejected, "'keras.utils.get_file'"),
    "keras_enable_unsafe_chain": Hostile(
        keras_enable_unsafe_chain, ModelRejected, "'keras.config.enable_unsafe_deserialization'"
    ),
    "keras_tfsm_layer": Hostile(keras_tfsm_layer, ModelRejected, "layer 'dense' (TFSMLayer) is not allowed"),
    "keras_vocabulary_file": Hostile(keras_vocabulary_file, ModelRejected, "layer 'lookup' (StringLookup)"),
    "keras_unknown_custom_object": Hostile(
        keras_unknown_custom_object, ModelRejected, "layer 'dense' (Backdoor) is not allowed"
    ),
    "keras_huge_layer_config": Hostile(
        keras_huge_layer_config,
        ModelRejected,
        "layer 'dense' (Dense): the config declares a 1099511627776-element weight",
    ),
    "keras_deep_config": Hostile(keras_deep_config, ModelRejected, "max_json_depth"),
    "keras_zip_bomb": Hostile(keras_zip_bomb, ModelRejected, "member 'model.weights.h5' has compression ratio"),
    "keras_parent_path_member": Hostile(keras_parent_path_member, ModelRejected, "a '..' component"),
    "keras_absolute_member": Hostile(keras_absolute_member, ModelRejected, "an absolute path"),
    "keras_pickle_member": Hostile(keras_pickle_member, ModelRejected, "unexpected member 'model.pkl'"),
    "keras_duplicate_config": Hostile(
        keras_duplicate_config, ModelRejected, "member 'config.json' appears more than once"
    ),
    "keras_weights_external_link": Hostile(
        keras_weights_external_link, ModelRejected, "'/layers/dense/vars' is an external link"
    ),
    "keras_escaped_quotes_config": Hostile(keras_escaped_quotes_config, ModelRejected, "config.json is not valid JSON"),
    "keras_escaped_quotes_metadata": Hostile(
        keras_escaped_quotes_metadata, ModelRejected, "metadata.json is not valid JSON"
    ),
    "keras_weights_link_maze": Hostile(keras_weights_link_maze, ModelRejected, "HDF5 soft link '/maze_0'"),
    "keras_weights_self_linked_group": Hostile(
        keras_weights_self_linked_group, ModelRejected, f"'/{LOOP}/loop' is a second hard link to '/{LOOP}'"
    ),
    "h5_lambda": Hostile(h5_lambda, ModelRejected, "layer 'lambda_1' (Lambda) is not allowed"),
    "h5_training_config_function": Hostile(h5_training_config_function, ModelRejected, "'os.system'"),
    "h5_oversized_tensor": Hostile(h5_oversized_tensor, ModelRejected, f"'/{KERNEL}' declares shape"),
    "h5_external_link": Hostile(h5_external_link, ModelRejected, "'/model_weights/dense/dense' is an external link"),
    "h5_external_storage": Hostile(h5_external_storage, ModelRejected, f"'/{KERNEL}' uses external storage"),
    "h5_virtual_dataset": Hostile(h5_virtual_dataset, ModelRejected, f"'/{KERNEL}' is a virtual dataset"),
    "h5_soft_link_outside": Hostile(h5_soft_link_outside, ModelRejected, f"soft link '/{KERNEL}'"),
    "h5_self_linked_group": Hostile(
        h5_self_linked_group, ModelRejected, "'/model_weights/dense/loop/loop' is a second hard link"
    ),
    "h5_long_soft_link": Hostile(
        h5_long_soft_link, ModelRejected, "HDF5 soft link '/model_weights/alias' (to a 1200015-byte target"
    ),
    "pickle_model": Hostile(pickle_model, UnsupportedFile, "a Python pickle"),
    "saved_model_dir": Hostile(saved_model_dir, UnsupportedFile, "a directory (a TensorFlow SavedModel?)"),
    "tflite_model": Hostile(tflite_model, UnsupportedFile, "a TensorFlow Lite flatbuffer"),
}

DATASET_ATTACKS: dict[str, Hostile] = {
    "npz_object_array": Hostile(npz_object_array, DataError, "array 'x' has dtype object"),
    "npz_parent_path_member": Hostile(npz_parent_path_member, DataError, "a '..' component"),
    "npz_bomb": Hostile(npz_bomb, DataError, "member 'x.npy' has compression ratio"),
    "npz_oversized_shape": Hostile(npz_oversized_shape, DataError, "array 'x' declares shape"),
    "npz_pickle_file": Hostile(npz_pickle_file, UnsupportedFile, "a Python pickle"),
}

HOSTILE: dict[str, Hostile] = {**MODEL_ATTACKS, **DATASET_ATTACKS}
