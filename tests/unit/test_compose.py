"""The deployment files: Dockerfile, .dockerignore, docker-compose.yml and .env.example.

No Docker engine is needed. The compose file is checked three ways: its structure with
PyYAML (what makes ``--scale`` work, where the secrets go), every command it runs against
the real CLI parser and backend catalog, and the whole file with Debian's docker-compose
v1 (``config`` validates and interpolates without an engine).

A missing tool fails the test with the way to install it, rather than skipping it: a
deployment check that quietly does not run is worse than none.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

try:
    import yaml
except ImportError:  # reported by _compose() as a failure, not a skip
    yaml = None

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

REDIS_SERVICE = "redis"
URL_TEMPLATE = "redis://:{password}@redis:6379/0"
# Settings that compose builds itself (url) or gives only to Flower and the Jobs page.
NOT_SHARED = {"url", "flower_auth"}


# ---------------------------------------------------------------------------- helpers
def _sb_module(name: str) -> types.ModuleType:
    """``session_broker.<name>``, even while the package ``__init__`` cannot be imported.

    ``session_broker/__init__.py`` re-exports modules that may be mid-edit; cli.py,
    config.py, errors.py and backends.py do not need them. If the package import fails,
    load the one module under a stand-in package object that skips ``__init__``.
    """
    try:
        return importlib.import_module(f"session_broker.{name}")
    except Exception as exc:  # noqa: BLE001 - any failure of the package __init__
        first = exc
    saved = sys.modules.get("session_broker")
    stub = types.ModuleType("session_broker")
    stub.__path__ = [str(ROOT / "session_broker")]
    sys.modules["session_broker"] = stub
    try:
        return importlib.import_module(f"session_broker.{name}")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"cannot import session_broker.{name}: {exc!r} (package import: {first!r})")
    finally:
        if saved is None:
            sys.modules.pop("session_broker", None)
        else:
            sys.modules["session_broker"] = saved


def _compose() -> dict:
    if yaml is None:
        pytest.fail(
            "PyYAML is missing: install the test extras (pip install -e '.[test]') "
            "or PyYAML alone (pip install PyYAML)"
        )
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict[str, dict]:
    return _compose()["services"]


def _env_example() -> dict[str, str]:
    """VAR -> value, parsed the way docker-compose v1 reads an env file."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not VAR=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


# what a user puts in .env, as .env.example's header says (its own secrets are empty)
SECRETS = {
    "REDIS_PASSWORD": "0123456789abcdef0123456789abcdef",
    "SESSION_BROKER_FLOWER_AUTH": "admin:0f1e2d3c",
}


def _filled_env_example() -> dict[str, str]:
    return {**_env_example(), **SECRETS}


def _filled_env_file(tmp_path: Path) -> Path:
    env = tmp_path / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in _filled_env_example().items()))
    return env


def _documented_in_env_example() -> set[str]:
    """Variables assigned in .env.example under a comment (an assignment block counts)."""
    documented, commented = set(), False
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line:
            commented = False
        elif line.startswith("#"):
            commented = True
        elif commented:
            documented.add(line.partition("=")[0].strip())
    return documented


# $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR
_REF = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution, enough for this file."""

    def sub(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["bare"]
        op, arg = m["op"], m["arg"]
        value = env.get(name)
        missing = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":?", "?") and missing:
            raise LookupError(f"${{{name}}} is required: {arg}")
        if op in (":-", "-") and missing:
            return arg
        return value or ""

    return _REF.sub(sub, text)


def _variables(node) -> set[str]:
    """Every variable referenced by a string anywhere in a parsed compose document."""
    if isinstance(node, dict):
        return set().union(*(_variables(k) | _variables(v) for k, v in node.items()))
    if isinstance(node, list):
        return set().union(set(), *(_variables(v) for v in node))
    if isinstance(node, str):
        return {m["braced"] or m["bare"] for m in _REF.finditer(node) if not m["escaped"]}
    return set()


def _argv(value) -> list[str]:
    """A compose command/entrypoint (list or shell string), interpolated from .env.example."""
    env = _env_example()
    if isinstance(value, str):
        return shlex.split(_interpolate(value, env))
    return [_interpolate(str(part), env) for part in value]


def _broker_services() -> dict[str, dict]:
    """Services that run the session-broker image (everything but Redis)."""
    return {name: svc for name, svc in _services().items() if name != REDIS_SERVICE}


def _worker_services() -> dict[str, dict]:
    return {
        name: svc
        for name, svc in _broker_services().items()
        if _argv(svc.get("command", []))[:1] == ["worker"]
    }


def _option(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...] form
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _depends_on(svc: dict) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (cond or {}).get("condition", "service_started") for name, cond in deps.items()}


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        lines.append((word.upper(), rest.strip()))
        buf = ""
    return lines


@functools.lru_cache(maxsize=1)
def _accepts_env_file(exe: str) -> bool:
    """--env-file arrived in docker-compose 1.25; older ones only read the environment."""
    return "--env-file" in subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60).stdout


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not on PATH: install Debian's docker-compose package "
            "(apt-get install docker-compose); its `config` command needs no Docker engine"
        )
    return exe


def _run_compose_config(env_file: Path, *extra: Path) -> subprocess.CompletedProcess:
    """``docker-compose -f docker-compose.yml --env-file FILE config``, isolated from the
    caller's shell (whose variables would otherwise win over the file's)."""
    exe = _docker_compose()
    file_env = {}
    for line in env_file.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            file_env[key.strip()] = value.strip()
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in _env_example() and k not in file_env and not k.startswith("COMPOSE_")
    }
    files = [arg for path in (COMPOSE, *extra) for arg in ("-f", str(path))]
    if _accepts_env_file(exe):
        argv = [exe, *files, "--env-file", str(env_file), "config"]
    else:
        argv, clean = [exe, *files, "config"], {**clean, **file_env}
    return subprocess.run(argv, cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_slim_non_root_and_runs_the_cli():
    steps = _dockerfile()
    args = {}
    for word, rest in steps:
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    bases = [_interpolate(rest.split()[0], args) for word, rest in steps if word == "FROM"]
    assert bases and all(b == "python:3.11-slim" for b in bases), bases

    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert re.search(r'pip install (--no-deps )?"?\.(\[[a-z,]+\])?"?(\s|$)', runs), (
        "the package is not pip-installed"
    )

    users = [rest for word, rest in steps if word == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"runs as {users[-1]}"

    entrypoint = [json.loads(rest) for word, rest in steps if word == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1] == ["session-broker"], (
        'ENTRYPOINT must be the exec form ["session-broker"] so compose commands are CLI args'
    )
    assert 'session-broker = "session_broker.ops.cli:main"' in (ROOT / "pyproject.toml").read_text()

    cmd = [json.loads(rest) for word, rest in steps if word == "CMD"]
    assert cmd and cmd[-1] == ["--help"], cmd
    parser = _sb_module("ops.cli").build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(cmd[-1])
    assert exit_.value.code == 0, "`session-broker --help` must exit 0"


def test_dockerignore_keeps_state_and_secrets_out_of_the_context():
    entries = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    for required in (".venv", ".git", ".sb-state", ".env"):
        assert required in entries, f".dockerignore lacks {required}"
    for required in ("tests/artifacts", "benchmarks/results"):
        parent = required.split("/")[0]
        assert required in entries or parent in entries, f".dockerignore lacks {required}"
    for needed in ("pyproject.toml", "session_broker", "tasks"):
        assert needed not in entries, f".dockerignore drops {needed}, which `pip install .` needs"


# ---------------------------------------------------------------------------- compose: structure
def test_redis_is_persistent_password_protected_and_health_checked():
    redis = _services()[REDIS_SERVICE]
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).split(":")[1].startswith("7")
    argv = redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    assert _option(argv, "--appendonly") == "yes", argv
    password = _option(argv, "--requirepass")
    assert password and re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", password), (
        "--requirepass must be ${REDIS_PASSWORD:?message}, so compose refuses an unset password"
    )
    volumes = [
        v.get("target") if isinstance(v, dict) else str(v).split(":")[1] for v in redis.get("volumes", [])
    ]
    assert "/data" in volumes, "no volume on /data: the append-only file would not survive"
    test = redis["healthcheck"]["test"]
    test = " ".join(test) if isinstance(test, list) else test
    assert "redis-cli" in test and "ping" in test, test
    env = _environment(redis)
    assert "-a " in test or env.get("REDISCLI_AUTH", "").startswith("${REDIS_PASSWORD"), (
        "the healthcheck's redis-cli has no password (-a or REDISCLI_AUTH)"
    )


def test_every_broker_service_runs_our_image_against_the_same_redis():
    password = SECRETS["REDIS_PASSWORD"]
    for name, svc in _broker_services().items():
        assert "build" in svc or "image" in svc, name
        assert _argv(svc.get("entrypoint", ["session-broker"])) == ["session-broker"], name
        url = _interpolate(_environment(svc).get("SESSION_BROKER_URL", ""), _filled_env_example())
        assert url == URL_TEMPLATE.format(password=password), f"{name}: SESSION_BROKER_URL={url!r}"
        assert _depends_on(svc).get(REDIS_SERVICE) == "service_healthy", (
            f"{name} must wait for a healthy Redis"
        )


def test_workers_cover_two_backends_and_scale():
    workers = _worker_services()
    backends = {name: _option(_argv(svc["command"]), "--backend") for name, svc in workers.items()}
    assert len(workers) >= 2 and len(set(backends.values())) >= 2, (
        f"need worker services for at least two backends, have {backends}"
    )
    known = set(_sb_module("backends").known_backends())
    for name, svc in workers.items():
        assert backends[name] in known, f"{name}: unknown backend {backends[name]!r}; known: {sorted(known)}"
        # Anything fixed per container breaks `docker compose up --scale NAME=3`: a
        # container_name or a host port cannot be shared, and a fixed --name would give
        # every replica the same Celery node name.
        for key in ("container_name", "ports", "hostname"):
            assert key not in svc, f"{name} sets {key}: `--scale {name}=3` would fail or collide"
        assert _option(_argv(svc["command"]), "--name") is None, (
            f"{name} fixes --name: replicas must get the default BACKEND-RANDOM@HOST"
        )


def test_flower_and_jobs_page_require_a_login_and_are_published():
    services = _broker_services()
    pages = {"flower": ("flower", 5555), "web": ("jobs", 5556)}
    by_command = {_argv(svc["command"])[0]: (name, svc) for name, svc in services.items()}
    for command, (expected_service, port) in pages.items():
        assert command in by_command, f"no service runs `session-broker {command}`"
        name, svc = by_command[command]
        assert name == expected_service, f"`{command}` should be the {expected_service!r} service"
        argv = _argv(svc["command"])
        assert _option(argv, "--address") == "0.0.0.0", f"{name} must listen beyond the container"
        assert _option(argv, "--port") == str(port), argv
        auth = _environment(svc).get("SESSION_BROKER_FLOWER_AUTH", "")
        assert re.fullmatch(r"\$\{SESSION_BROKER_FLOWER_AUTH:\?[^}]+\}", auth), (
            f"{name}: SESSION_BROKER_FLOWER_AUTH must be ${{SESSION_BROKER_FLOWER_AUTH:?...}} (required)"
        )
        published = [str(p) for p in svc.get("ports", [])]
        assert any(p.endswith(f":{port}") for p in published), f"{name}: port {port} not published"
    for name, svc in services.items():
        if name not in ("flower", "jobs"):
            assert "SESSION_BROKER_FLOWER_AUTH" not in _environment(svc), (
                f"{name} gets the Flower login without needing it"
            )


def test_producer_runs_the_demo_once_after_redis_and_workers():
    producer = _services()["producer"]
    assert _argv(producer["command"])[:1] == ["demo"]
    assert producer.get("restart") == "no", "a one-shot producer must not be restarted"
    deps = _depends_on(producer)
    assert deps.get(REDIS_SERVICE) == "service_healthy"
    missing = set(_worker_services()) - set(deps)
    assert not missing, f"producer does not wait for {sorted(missing)}"


# ---------------------------------------------------------------------------- compose: CLI
def test_every_command_is_a_valid_session_broker_command():
    parser = _sb_module("ops.cli").build_parser()
    for name, svc in _broker_services().items():
        argv = _argv(svc.get("command", []))
        shown = "session-broker " + shlex.join(argv)
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"service {name!r}: `{shown}` is not a valid command (exit {exc.code})")


# ---------------------------------------------------------------------------- .env.example
def test_every_variable_is_documented_in_env_example():
    used = _variables(_compose())
    documented = _documented_in_env_example()
    assert not used - documented, (
        f"used in docker-compose.yml but not documented (with a comment) in .env.example: {sorted(used - documented)}"
    )
    assert not set(_env_example()) - used, (
        f"documented in .env.example but unused: {sorted(set(_env_example()) - used)}"
    )


def test_env_example_states_the_real_defaults_and_every_setting_is_forwarded():
    config = _sb_module("core.config")
    example = _env_example()
    shared = [name for name in config.Settings.model_fields if name not in NOT_SHARED]
    names = [config.env_name(f) for f in shared]
    assert not set(names) - set(example), f".env.example lacks {sorted(set(names) - set(example))}"
    from_example = config.load_settings({n: example[n] for n in names})
    defaults = config.load_settings({})  # the built-in defaults, whatever this process's environment
    wrong = {
        config.env_name(f): (getattr(from_example, f), getattr(defaults, f))
        for f in shared
        if getattr(from_example, f) != getattr(defaults, f)
    }
    assert not wrong, f".env.example (value, built-in default) differ: {wrong}"
    config.load_settings({"SESSION_BROKER_FLOWER_AUTH": example["SESSION_BROKER_FLOWER_AUTH"]})
    for name, svc in _broker_services().items():
        env = _environment(svc)
        assert not set(names) - set(env), f"{name} does not forward {sorted(set(names) - set(env))}"


# ---------------------------------------------------------------------------- docker-compose v1
def test_docker_compose_accepts_the_file_with_env_example_once_its_secrets_are_set(tmp_path):
    services = _services()
    result = _run_compose_config(_filled_env_file(tmp_path))
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    resolved = yaml.safe_load(result.stdout)["services"]
    assert set(resolved) == set(services)
    password = SECRETS["REDIS_PASSWORD"]
    for name, svc in resolved.items():
        if name != REDIS_SERVICE:
            assert svc["environment"]["SESSION_BROKER_URL"] == URL_TEMPLATE.format(password=password)
            assert [str(a) for a in svc["command"]] == _argv(services[name]["command"]), (
                f"{name}: our interpolation differs from docker-compose's"
            )


def test_docker_compose_refuses_env_example_copied_unchanged():
    """Issue 24: .env.example's placeholder secrets were accepted as they were. Its secrets
    are empty now, and compose's ${VAR:?} refuses an empty value as it refuses a missing one."""
    assert not {k: v for k, v in _env_example().items() if k in SECRETS and v}, (
        ".env.example must leave its secrets empty: a placeholder would be deployed as the secret"
    )
    result = _run_compose_config(ENV_EXAMPLE)
    assert result.returncode != 0, "docker-compose accepted .env.example's secrets unchanged"
    assert "REDIS_PASSWORD" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "given, missing",
    [
        ({}, "REDIS_PASSWORD"),
        ({"REDIS_PASSWORD": "0123abcd"}, "SESSION_BROKER_FLOWER_AUTH"),
    ],
)
def test_docker_compose_refuses_to_run_without_the_secrets(tmp_path, given, missing):
    env_file = tmp_path / "partial.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in given.items()))
    result = _run_compose_config(env_file)
    assert result.returncode != 0, f"docker-compose accepted a file without {missing}"
    assert missing in result.stderr, result.stderr


# ---------------------------------------------------------------------------- Sentinel
def test_ha_override_points_every_app_at_three_sentinels(tmp_path):
    """docker-compose.ha.yml: a replica and three Sentinels; every session-broker service
    gets a sentinel:// URL our own parser accepts and WAITs for one replica."""
    import yaml

    from session_broker.core import sentinel

    env = _filled_env_file(tmp_path)
    proc = _run_compose_config(env, ROOT / "docker-compose.ha.yml")
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(services)
    assert "--replicaof" in services["redis-replica"]["command"]
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        script = " ".join(services[name]["command"])
        assert "sentinel monitor mymaster redis 6379 2" in script and "--sentinel" in script
    apps = [n for n, svc in services.items() if svc.get("image", "").startswith("session-broker")]
    assert len(apps) >= 5, apps
    for name in apps:
        environment = services[name]["environment"]
        parsed = sentinel.parse(environment["SESSION_BROKER_URL"])
        assert parsed.master == "mymaster" and len(parsed.hosts) == 3, name
        assert str(environment["SESSION_BROKER_WAIT_REPLICAS"]) == "1", name


def test_env_example_describes_the_worker_as_it_is():
    """Issue 24: it still spoke of Celery's prefork pool, which the supervisor replaced."""
    text = ENV_EXAMPLE.read_text() + COMPOSE.read_text()
    assert "prefork" not in text and "pool process" not in text
