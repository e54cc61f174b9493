"""The engine is a pure library: importing it loads no web, queue or database module, and below the facade
(`pipeline`, with its spec converter `config`) no pydantic and no job spec either."""

import ast
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import workers.engine

FORBIDDEN = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "celery",
    "kombu",
    "redis",
    "psycopg",
    "httpx",
    "boto3",
    "service",
    "workers.store",
    "workers.dispatch",
    "workers.runner",
)
FACADE = ("workers.engine.pipeline", "workers.engine.config")  # the only engine code that reads workers.spec


def _in_facade(module: str) -> bool:
    """The facade is the pipeline package (its entry point and the step runners) and the converter."""
    return any(module == f or module.startswith(f + ".") for f in FACADE)


CONTRACT = ("pydantic", "workers.spec")


def _below_facade() -> list[str]:
    found = pkgutil.walk_packages(workers.engine.__path__, "workers.engine.")
    return sorted(m.name for m in found if not _in_facade(m.name))


def _loads(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _modules_loaded_by(code: str) -> list[str]:
    """The modules in sys.modules after a fresh interpreter runs `code` (which prints them as its last line)."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_engine_imports_no_web_queue_or_db_modules():
    code = (
        "import sys, json; import workers.engine.pipeline, workers.engine.inspection, workers.engine.preflight, "
        "workers.cli; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = _modules_loaded_by(code)
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []
    assert "keras" in loaded and "workers.engine.pipeline" in loaded


def test_upload_inspection_does_not_import_tensorflow():
    code = "import sys, workers.engine.inspection; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_engine_below_the_facade_imports_no_pydantic_and_no_job_spec():
    modules = _below_facade()
    assert {
        "workers.engine.model_io",
        "workers.engine.data",
        "workers.engine.registry",
        "workers.engine.schedules",
        "workers.engine.pruning",
        "workers.engine.structured.prune",
        "workers.engine.preflight",
    } <= set(modules)
    code = (
        f"import importlib, json, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = _modules_loaded_by(code)
    assert set(modules) <= set(loaded)
    assert [m for m in loaded if _loads(m, CONTRACT)] == []


def test_no_engine_module_below_the_facade_imports_the_contract_even_lazily():
    root = Path(workers.engine.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("workers", *path.relative_to(root.parent).with_suffix("").parts)).removesuffix(".__init__")
        if _in_facade(module):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            offenders += [f"{module}: {n}" for n in names if _loads(n, CONTRACT)]
    assert offenders == []
