"""tests/hostile.py: the registry covers every attack class, and every payload is live when loaded unsafely.

So the refusals tested in tests/engine/inspection (and at the API in tests/service/test_hostile_uploads.py) refuse
real attacks, not files that would have been harmless anyway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.hostile import DATASET_ATTACKS, HOSTILE, MODEL_ATTACKS
from workers.engine.errors import EngineError

ROOT = Path(__file__).resolve().parents[1]


def test_registry_covers_every_attack_class_with_an_engine_error():
    assert set(HOSTILE) == set(MODEL_ATTACKS) | set(DATASET_ATTACKS)
    for name, (generate, error, fragment) in HOSTILE.items():
        assert callable(generate) and issubclass(error, EngineError) and fragment, name


LIVENESS = textwrap.dedent("""
    import importlib, json, sys, warnings
    from pathlib import Path
    import keras
    warnings.simplefilter("ignore")
    fired = {}
    for kind, path, canary in json.loads(sys.argv[1]):
        try:
            if kind == "load_unsafe":
                keras.saving.load_model(path, safe_mode=False)
            elif kind in ("call_references", "unlock_then_load"):
                # What Keras < 3.9 did with these 'layers': resolve module.function, call it with the node args.
                config = json.loads(__import__("zipfile").ZipFile(path).read("config.json"))
                for layer in config["config"]["layers"]:
                    if layer.get("class_name") == "function":
                        fn = getattr(importlib.import_module(layer["module"]), layer["config"])
                        node = layer["inbound_nodes"][0]
                        fn(*node["args"], **node["kwargs"])
                if kind == "unlock_then_load":  # unsafe mode is now on: the Lambda loads with safe_mode=True
                    keras.saving.load_model(str(Path(path).with_name("lambda.keras")))
            elif kind == "unpickle":
                import numpy as np, pickle
                if path.endswith(".npz"):
                    np.load(path, allow_pickle=True)["x"]
                else:
                    pickle.loads(Path(path).read_bytes())
        except Exception:
            pass  # a payload that needs a working model may still fail after it fired
        fired[path] = Path(canary).exists()
    print(json.dumps(fired))
""")


def test_hostile_payloads_are_live_when_loaded_unsafely(tmp_path):
    """The canaries are real: loading without our inspection (unsafe) fires each one."""
    cases = {
        "keras_lambda": "load_unsafe",
        "h5_lambda": "load_unsafe",
        "keras_duplicate_config": "load_unsafe",
        "keras_builtins_exec": "call_references",
        "keras_os_system": "call_references",
        "keras_get_file": "call_references",
        "npz_object_array": "unpickle",
        "pickle_model": "unpickle",
    }
    tasks = []
    for name, kind in cases.items():
        d = tmp_path / name
        d.mkdir()
        canary = d / "canary" / "CANARY"
        canary.parent.mkdir()
        tasks.append((kind, str(HOSTILE[name].generate(d, canary)), str(canary)))
    # The enable_unsafe_deserialization chain: calling the referenced function unlocks the armed Lambda file.
    d = tmp_path / "chain"
    (d / "canary").mkdir(parents=True)
    chain = HOSTILE["keras_enable_unsafe_chain"].generate(d, d / "canary" / "CANARY")
    HOSTILE["keras_lambda"].generate(d, d / "canary" / "CANARY")
    tasks.append(("unlock_then_load", str(chain), str(d / "canary" / "CANARY")))

    out = subprocess.run(
        [sys.executable, "-c", LIVENESS, json.dumps(tasks)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    fired = json.loads(out.stdout.strip().splitlines()[-1])
    assert fired == {path: True for _, path, _ in tasks}, out.stderr[-2000:]
