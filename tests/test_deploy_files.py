"""Static checks of the container files: Dockerfile, .dockerignore and docker-compose.yml.

Docker is not run here. These tests read the files and hold them against the project itself: the console
scripts in pyproject.toml, the real CLI parser and the real settings model (workers/settings.py), so a renamed
setting or command breaks the build instead of a deployment.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from workers.artifacts import url_scheme
from workers.artifacts.s3 import parse_s3_url
from workers.dispatch import DISPATCHERS
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "SECATEURS_"
OUR_IMAGE_SERVICES = ("api", "worker")
SHELL = {"POSTGRES_PASSWORD": "pw", "WEBHOOK_SECRET": "whsec", "MINIO_ROOT_PASSWORD": "miniopw"}  # compose's shell


# -- readers -----------------------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def instruction_args(instructions, keyword: str) -> list[str]:
    return [args for k, args in instructions if k == keyword]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value), args
    return value


def dockerfile_env(instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction_args(instructions, "ENV"):
        for token in shlex.split(args):
            key, eq, value = token.partition("=")
            assert eq, f"ENV {args!r}: use the KEY=value form"
            env[key] = value
    return env


# -- settings names ----------------------------------------------------------------------------------------------


def settings_field(env_name: str):
    """The settings field an environment variable sets (pydantic-settings rules: prefix SECATEURS_, nested groups
    joined by '__', case-insensitive), or None when no such field exists."""
    if not env_name.upper().startswith(PREFIX):
        return None
    model: type[BaseModel] = Settings
    parts = env_name[len(PREFIX) :].lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if i == len(parts) - 1:
            return field
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return None


def test_settings_name_resolution_rejects_unknown_names():
    # The checks below are only as good as this resolver: it must say no to names that are not fields.
    assert settings_field("SECATEURS_DATA_DIR") is Settings.model_fields["data_dir"]
    assert settings_field("SECATEURS_WORKER__DISPATCHER") is not None
    for bad in (
        "SECATEURS_NOPE",
        "SECATEURS_WORKER__NOPE",
        "SECATEURS_DATA_DIR__X",
        "SECATEURS_WORKER_DISPATCHER",
        "OTHER_DATA_DIR",
    ):
        assert settings_field(bad) is None, bad


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, shell_env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} against `shell_env`; a required unset variable fails."""

    def substitute(m: re.Match) -> str:
        name, op, arg = m["name"], m["op"], m["arg"]
        if name in shell_env:
            return shell_env[name]
        if op and op.endswith("-"):
            return arg
        assert not (op and op.endswith("?")), f"${{{name}}} is required: {arg}"
        return ""

    return _INTERPOLATION.sub(substitute, value)


def service_environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


# -- Dockerfile ----------------------------------------------------------------------------------------------------


def test_dockerfile_base_image_is_python_3_11(dockerfile):
    images = instruction_args(dockerfile, "FROM")
    assert images, "no FROM"
    for args in images:
        image = args.split()[0] if not args.startswith("--") else args.split()[1]
        assert re.fullmatch(
            r"(docker\.io/(library/)?)?python:3\.11([.\d]*)(-[\w.-]+)?(@sha256:[0-9a-f]{64})?", image
        ), f"base image {image!r} is not Python 3.11"


def test_dockerfile_runs_as_a_non_root_user_it_creates(dockerfile):
    users = instruction_args(dockerfile, "USER")
    assert users, "no USER: the container would run as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0") and group not in ("root", "0"), users[-1]
    runs = " ".join(instruction_args(dockerfile, "RUN"))
    if user.isdigit():
        assert re.search(rf"useradd\b[^&;]*--uid {user}\b", runs), f"no useradd creates uid {user}"
    else:
        assert re.search(rf"useradd\b[^&;]*\b{re.escape(user)}\b", runs), f"no useradd creates {user}"
    # USER comes after everything that needs root, and nothing after it switches back.
    last_user = max(i for i, (k, _) in enumerate(dockerfile) if k == "USER")
    assert all(k != "RUN" for k, _ in dockerfile[last_user:])


def test_dockerfile_cmd_is_a_console_script_of_the_project(dockerfile, pyproject):
    cmds = instruction_args(dockerfile, "CMD")
    assert len(cmds) == 1
    argv = exec_form(cmds[0])  # exec form: signals reach the server, not a shell
    scripts = pyproject["project"]["scripts"]
    assert argv[0] in scripts, f"CMD runs {argv[0]!r}, not one of [project.scripts] {sorted(scripts)}"
    assert argv[1:] == ["serve"]
    module, _, func = scripts[argv[0]].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
    assert not instruction_args(dockerfile, "ENTRYPOINT")


def test_dockerfile_installs_the_project_and_copies_only_what_exists(dockerfile):
    runs = instruction_args(dockerfile, "RUN")
    assert any(re.search(r"pip install (--[\w-]+ )*\.(\s|$)", r) for r in runs), "the project is not installed"
    for args in instruction_args(dockerfile, "COPY"):
        assert not args.startswith("--from"), args
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerfile_sets_a_data_volume_the_settings_use(dockerfile):
    env = dockerfile_env(dockerfile)
    for name in (n for n in env if n.startswith(PREFIX)):
        assert settings_field(name) is not None, f"ENV {name} is not a settings field"
    data_dir = env.get("SECATEURS_DATA_DIR")
    assert data_dir and data_dir.startswith("/")
    volumes = [v for args in instruction_args(dockerfile, "VOLUME") for v in exec_form(args)]
    assert data_dir in volumes
    assert env.get("SECATEURS_HOST") == "0.0.0.0", "inside a container the server must listen on all interfaces"


def test_dockerfile_healthcheck_probes_healthz_on_the_served_port(dockerfile):
    checks = instruction_args(dockerfile, "HEALTHCHECK")
    assert len(checks) == 1 and " CMD " in f" {checks[0]} "
    assert "/healthz" in checks[0]
    port = dockerfile_env(dockerfile)["SECATEURS_PORT"]
    assert "SECATEURS_PORT" in checks[0] or f":{port}/healthz" in checks[0]
    assert port in " ".join(instruction_args(dockerfile, "EXPOSE")).split()
    # The probe must work in the slim image: no curl or wget there.
    assert not re.search(r"\b(curl|wget)\b", checks[0])


# -- .dockerignore ---------------------------------------------------------------------------------------------


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "re-includes are not supported by this check"
    return [p.strip("/") for p in patterns]


def dockerignored(path: str) -> bool:
    """Whether .dockerignore excludes `path` (relative to the repository) or a directory above it."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in _dockerignore_patterns():
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], pattern[3:]):
                return True
    return False


def test_dockerignore_keeps_secrets_environments_and_local_data_out_of_the_build_context():
    for path in (
        ".git/config",
        ".venv/bin/python",
        ".env",
        ".secateurs/jobs.db",
        "workers/__pycache__/x.pyc",
        "tests/conftest.py",
    ):
        assert dockerignored(path), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "README.md", "workers/cli.py", "workers/engine/pipeline.py"):
        assert not dockerignored(path), f"{path} is needed by the build"


# -- docker-compose.yml ----------------------------------------------------------------------------------------


def test_compose_has_the_scale_out_services_each_with_an_image_or_build(compose):
    services = compose["services"]
    assert {"api", "worker", "postgres", "redis", "minio"} <= set(services)
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"service {name} has neither image nor build"
    assert any(services[s].get("build") for s in OUR_IMAGE_SERVICES), "nothing builds the project image"
    # Services that run the project share one image, so `--scale worker=N` reuses what api built.
    images = {services[s].get("image") for s in OUR_IMAGE_SERVICES}
    assert len(images) == 1 and None not in images


def test_compose_depends_on_targets_exist_and_health_conditions_have_a_healthcheck(compose, dockerfile):
    services = compose["services"]
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for target, options in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
            condition = (options or {}).get("condition", "service_started")
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                check = services[target].get("healthcheck") or {}
                built_here = bool(services[target].get("build")) and instruction_args(dockerfile, "HEALTHCHECK")
                assert (check.get("test") and not check.get("disable")) or built_here, (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )


def test_every_secateurs_variable_in_compose_is_a_settings_field(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\b(SECATEURS_[A-Za-z0-9_]+)", text))
    assert used, "compose configures nothing"
    unknown = sorted(n for n in used if settings_field(n) is None)
    assert not unknown, f"not fields of workers.settings.Settings: {unknown}"
    for name, service in compose["services"].items():
        for key in service_environment(service):
            if key.upper().startswith(PREFIX):
                assert settings_field(key) is not None, f"{name}: {key}"


@pytest.mark.parametrize("service_name", OUR_IMAGE_SERVICES)
def test_compose_environment_builds_valid_settings(compose, service_name, monkeypatch):
    """The values, not only the names: Settings() reads each service's environment without error."""
    env = service_environment(compose["services"][service_name])
    shell = SHELL
    for key in list(__import__("os").environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, interpolate(value, shell))
    settings = Settings()
    assert str(settings.data_dir) == env["SECATEURS_DATA_DIR"]
    assert settings.store_url.startswith("postgresql+psycopg://secateurs:pw@postgres:5432/")
    assert settings.webhooks.secret == "whsec"
    assert url_scheme(settings.artifacts.url) == "s3" and settings.artifacts.url.startswith("s3://")
    parse_s3_url(settings.artifacts.url)  # a well-formed bucket URL
    assert settings.artifacts.s3.secret_access_key.get_secret_value() == "miniopw"
    assert settings.worker.dispatcher == "celery", "API and workers meet through the Celery broker"
    assert settings.worker.dispatcher in DISPATCHERS
    if service_name == "api":
        assert settings.host == "0.0.0.0"
    else:
        assert settings.worker.concurrency >= 1, "a Celery worker needs at least one pool process"


def test_compose_secrets_are_required_not_hard_coded(compose):
    for name, service in compose["services"].items():
        for key, value in service_environment(service).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert re.fullmatch(r".*\$\{\w+:\?[^}]*\}.*", value), f"{name}: {key} is hard-coded or optional"
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        interpolate(service_environment(compose["services"]["postgres"])["POSTGRES_PASSWORD"], {})


def _settings_of(compose, service_name: str, monkeypatch) -> Settings:
    for key in list(__import__("os").environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in service_environment(compose["services"][service_name]).items():
        monkeypatch.setenv(key, interpolate(value, SHELL))
    return Settings()


def _service_host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname


def test_api_and_workers_meet_only_through_the_store_the_broker_and_the_bucket(compose, monkeypatch):
    api, worker = (_settings_of(compose, name, monkeypatch) for name in OUR_IMAGE_SERVICES)
    assert api.store_url == worker.store_url
    assert api.celery == worker.celery, "the API sends to the queue (broker, prefix) the workers consume"
    assert api.artifacts == worker.artifacts, "the API stores uploads where the workers read them"
    services = compose["services"]
    assert _service_host(api.store_url) == "postgres" and _service_host(api.celery.broker_url) == "redis"
    assert _service_host(api.artifacts.s3.endpoint_url) == "minio"
    for name in ("postgres", "redis", "minio"):
        assert name in services and services[name].get("image"), name
    # a bucket, not a directory: no data volume is shared between the API and the workers
    api_volumes = {s for s, _t, _m in _volumes(services["api"])}
    worker_volumes = {s for s, _t, _m in _volumes(services["worker"])}
    assert not (api_volumes & worker_volumes)


def test_the_minio_credentials_are_the_ones_the_services_use(compose, monkeypatch):
    minio = {k: interpolate(v, SHELL) for k, v in service_environment(compose["services"]["minio"]).items()}
    settings = _settings_of(compose, "worker", monkeypatch)
    assert settings.artifacts.s3.access_key_id == minio["MINIO_ROOT_USER"]
    assert settings.artifacts.s3.secret_access_key.get_secret_value() == minio["MINIO_ROOT_PASSWORD"]
    assert settings.artifacts.s3.addressing_style == "path", "MinIO serves buckets by path"
    with pytest.raises(AssertionError, match="MINIO_ROOT_PASSWORD"):  # required, never defaulted
        interpolate(service_environment(compose["services"]["minio"])["MINIO_ROOT_PASSWORD"], {})


def test_the_api_waits_for_its_back_ends_and_the_workers_for_the_api(compose):
    services = compose["services"]
    api_deps = services["api"]["depends_on"]
    for name in ("postgres", "redis", "minio"):
        assert api_deps[name]["condition"] == "service_healthy", name
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"
    grace = str(services["worker"].get("stop_grace_period", ""))
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= 30, "a stopping worker needs time to release its job"


@pytest.mark.parametrize("service_name", OUR_IMAGE_SERVICES)
def test_compose_commands_are_project_console_scripts_the_cli_accepts(compose, pyproject, service_name):
    command = compose["services"][service_name]["command"]
    argv = command if isinstance(command, list) else shlex.split(command)
    assert argv[0] in pyproject["project"]["scripts"]
    expected = {"api": "serve", "worker": "worker"}[service_name]
    assert argv[1] == expected
    from service.cli import build_parser

    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as e:  # argparse reports a bad command line by exiting
        pytest.fail(f"{service_name}: `{' '.join(argv)}` is refused by the CLI (exit {e.code})")
    assert args.command == expected
    if service_name == "api":
        assert args.workers == 0, "the API container must not start local workers (the worker service runs jobs)"


def _ports(service: dict) -> list[tuple[str | None, int | None, int]]:
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            out.append(
                (port.get("host_ip"), int(port["published"]) if port.get("published") else None, int(port["target"]))
            )
            continue
        m = re.fullmatch(
            r"(?:(?P<ip>[\d.]+|\[[0-9a-fA-F:]+\]):)?(?:(?P<host>\d+):)?(?P<target>\d+)(?:/(tcp|udp))?", str(port)
        )
        assert m, f"port {port!r} is malformed"
        out.append((m["ip"], int(m["host"]) if m["host"] else None, int(m["target"])))
    return out


def test_compose_ports_are_well_formed_and_the_api_publishes_its_port(compose):
    for name, service in compose["services"].items():
        for _ip, host, target in _ports(service):
            assert 1 <= target <= 65535 and (host is None or 1 <= host <= 65535), name
    api_port = int(service_environment(compose["services"]["api"])["SECATEURS_PORT"])
    assert api_port in [t for _i, _h, t in _ports(compose["services"]["api"])]
    for name in set(compose["services"]) - {"api"}:
        assert not compose["services"][name].get("ports"), f"{name} should not be published on the host"


def _volumes(service: dict) -> list[tuple[str | None, str, str | None]]:
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            out.append((volume.get("source"), volume["target"], "ro" if volume.get("read_only") else None))
            continue
        parts = str(volume).split(":")
        assert 1 <= len(parts) <= 3, f"volume {volume!r} is malformed"
        if len(parts) == 1:
            out.append((None, parts[0], None))
        else:
            out.append((parts[0], parts[1], parts[2] if len(parts) == 3 else None))
    return out


def test_compose_volumes_are_well_formed_and_declared(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for source, target, mode in _volumes(service):
            assert target.startswith("/"), f"{name}: volume target {target!r} is not absolute"
            assert mode in (None, "ro", "rw", "z", "Z"), f"{name}: volume mode {mode!r}"
            if source and not source.startswith((".", "/", "~")):
                assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", source), f"{name}: volume name {source!r}"
                assert source in declared, f"{name}: named volume {source!r} is not declared"
                used.add(source)
    assert declared <= used, f"declared but unused volumes: {declared - used}"
