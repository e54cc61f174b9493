"""The engine is a pure library: importing it loads no web, queue or database module."""

import json
import os
import subprocess
import sys

FORBIDDEN = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "celery", "kombu", "redis", "psycopg", "httpx",
             "boto3", "service", "workers.store", "workers.dispatch", "workers.runner")


def test_engine_imports_no_web_queue_or_db_modules():
    code = (
        "import sys, json; import workers.engine.pipeline, workers.engine.inspection, workers.engine.preflight, "
        "workers.cli; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []
    assert "keras" in loaded and "workers.engine.pipeline" in loaded


def test_upload_inspection_does_not_import_tensorflow():
    code = "import sys, workers.engine.inspection; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
