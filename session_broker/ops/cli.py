"""``session-broker``: the command line. ``build_parser()`` is the one definition of it.

Commands: ``up`` (the whole stack on one machine; ``--ha`` with Sentinel), ``worker``,
``flower``, ``api`` (the one web front: IBM's REST API, the Jobs page and /metrics), ``web``
(the same front, the Jobs page's login required), ``demo``, ``bench``, the operator's views
(``sessions``, ``session``, ``jobs``, ``job``, ``workers``) and ``acl`` (a tenant's Redis ACL
users). Exit codes: 0 ok, 1 failure, 2 bad usage or configuration, 3 not found, 4 Redis
unreachable.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="session-broker", description="Qiskit Runtime-style sessions on Celery + Redis"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run Redis (if none), workers, Flower and the Jobs page in the foreground")
    up.add_argument(
        "--backend",
        action="append",
        help="backend to start workers for (repeatable; default ibmq_qasm_simulator and ibm_algiers, "
        "the backends the README's examples use)",
    )
    up.add_argument("--workers", type=int, default=1, help="workers per backend (default 1)")
    up.add_argument("--flower-port", type=int, default=5555)
    up.add_argument(
        "--web-port",
        type=int,
        default=5556,
        help="the web front: Jobs page, /metrics and IBM's REST API (default 5556)",
    )
    up.add_argument("--no-flower", action="store_true")
    up.add_argument("--no-web", action="store_true")
    up.add_argument(
        "--ha",
        action="store_true",
        help="start a Sentinel-managed Redis (master, replica, three Sentinels) instead of one Redis",
    )
    up.add_argument(
        "--state-dir", default=".sb-state", help="logs and embedded Redis data (default .sb-state)"
    )

    w = sub.add_parser("worker", help="start a worker serving one backend")
    w.add_argument("--backend", required=True)
    w.add_argument("--concurrency", type=int, default=1)
    w.add_argument(
        "--name", help="node name (default BACKEND-RANDOM@HOST); reuse it to keep a pin across restarts"
    )
    w.add_argument("--device", choices=["CPU", "GPU"], default="CPU")
    w.add_argument(
        "--loglevel",
        default="WARNING",
        help="default WARNING: INFO logs two lines per job (Flower and the Jobs page show them)",
    )

    f = sub.add_parser("flower", help="run Flower (every page but /healthcheck needs the login)")
    f.add_argument("--address", default="127.0.0.1")
    f.add_argument("--port", type=int, default=5555)

    web = sub.add_parser(
        "web", help="serve the web front (Jobs page, /metrics, REST API); needs the Flower login"
    )
    web.add_argument("--address", default="127.0.0.1")
    web.add_argument("--port", type=int, default=5556)

    api = sub.add_parser("api", help="serve IBM's Qiskit Runtime REST API (and the Jobs page, /metrics)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--certfile", help="TLS certificate (PEM); with --keyfile serves https")
    api.add_argument("--keyfile", help="TLS private key (PEM)")

    d = sub.add_parser("demo", help="run the guide's examples (starts a local stack if none answers)")
    d.add_argument("--state-dir", default=".sb-state")

    b = sub.add_parser("bench", help="run the benchmark suite (benchmarks/run.py; needs a checkout)")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--workers", type=int, default=2)

    def table_opts(parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")

    sessions = sub.add_parser("sessions", help="list sessions")
    table_opts(sessions)
    sessions.add_argument("--limit", type=int, default=50)

    session = sub.add_parser("session", help="show, close or cancel a session")
    session.add_argument("action", choices=["show", "close", "cancel"])
    session.add_argument("id")
    session.add_argument("--json", action="store_true")
    session.add_argument("--wait", action="store_true", help="after close, wait until it is closed")

    jobs = sub.add_parser("jobs", help="list jobs")
    table_opts(jobs)
    jobs.add_argument("--session")
    jobs.add_argument("--limit", type=int, default=50)

    job = sub.add_parser("job", help="show or cancel a job")
    job.add_argument("action", choices=["show", "cancel", "wait"])
    job.add_argument("id")
    job.add_argument("--json", action="store_true")

    workers = sub.add_parser("workers", help="list live workers")
    table_opts(workers)

    acl = sub.add_parser("acl", help="print the Redis ACL users (producer, worker, web) of a tenant")
    acl.add_argument("tenant", help="the tenant's SESSION_BROKER_KEY_PREFIX")
    acl.add_argument(
        "--password-file",
        help="ROLE=PASSWORD lines, mode 0600; missing roles get a "
        "random password written there. Only hashes are printed",
    )
    acl.add_argument("--db", type=int, help="Redis database (default: the one in SESSION_BROKER_URL)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.errors import (
        BrokerConnectionError,
        ConfigurationError,
        JobNotFoundError,
        SessionBrokerError,
        SessionNotFoundError,
        UnknownBackendError,
    )

    try:
        return int(COMMANDS[args.command](args) or 0)
    except (ConfigurationError, UnknownBackendError) as exc:
        print(f"session-broker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SessionNotFoundError, JobNotFoundError) as exc:
        print(f"session-broker: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except BrokerConnectionError as exc:
        print(f"session-broker: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except SessionBrokerError as exc:
        print(f"session-broker: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------------- commands
def cmd_worker(args) -> int:
    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.core.config import get_settings

    get_settings()
    if args.concurrency < 1:
        print("session-broker: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    # the supervisor checks the backend, the GPU and Redis while its executors boot
    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.core.spawn import worker_module

    return worker_module("supervisor").start_worker(
        args.backend, concurrency=args.concurrency, name=args.name, device=args.device, loglevel=args.loglevel
    )


def cmd_flower(args) -> int:
    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.core.config import get_settings

    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.core.spawn import child_env, python_module

    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.ops.embedded import FLOWER_COLUMNS, Stack

    settings = get_settings()
    # the login stays in the environment (flower_login.py): argv is visible to every local user
    os.environ["SESSION_BROKER_FLOWER_AUTH"] = settings.flower_auth or Stack().flower_auth()
    argv = python_module(
        "session_broker.ops.flower_login",
        f"--address={args.address}",
        f"--port={args.port}",
        "--persistent=False",
        FLOWER_COLUMNS,
    )
    os.execve(argv[0], argv, child_env(dict(os.environ)))


def cmd_up(args) -> int:
    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker import backends

    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.ops.embedded import DEFAULT_BACKENDS, Stack, start_stack

    names = args.backend or list(DEFAULT_BACKENDS)
    for name in names:
        backends.get_spec(name)
    stack = Stack(args.state_dir, quiet=True)
    stopping = {"now": False}

    def on_signal(signum, _frame):
        stopping["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        url = start_stack(
            stack,
            names,
            args.workers,
            None if args.no_flower else args.flower_port,
            None if args.no_web else args.web_port,
            say=print,
            ha=args.ha,
        )
        print("\n" + ready_line(url, args.ha))
        if not args.no_web:
            # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
            from session_broker.api.settings import load_api_settings

            # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
            from session_broker.ops.front import recipe

            print(
                "\n".join(
                    recipe(f"http://127.0.0.1:{args.web_port}", load_api_settings().instance, stack.api_key())
                )
            )
        print("Ctrl-C stops everything.", flush=True)
        reported: set[str] = set()
        while not stopping["now"]:
            dead = [c for c in stack.children if not c.alive() and c.name not in reported]
            # with --ha a Redis node may die: that is what the Sentinels are for
            tolerated = [c for c in dead if args.ha and c.name.startswith(("redis-", "sentinel-"))]
            for c in dead:
                print(f"!! {c.name} exited with code {c.proc.returncode}; see {c.log}", flush=True)
                reported.add(c.name)
            if len(dead) > len(tolerated):
                return EXIT_FAIL
            time.sleep(0.2)
        return EXIT_OK
    finally:
        print("stopping...", flush=True)
        stack.stop()
        print("stopped: no process left behind.", flush=True)


def ready_line(url: str, ha: bool) -> str:
    """What ``up`` prints when its stack is up: the exports a producer needs, all of them (with
    ``--ha`` a producer must also WAIT for a replica, as ``start_stack`` set for this stack)."""
    exports = [f"SESSION_BROKER_URL={url}"]
    if ha:
        exports.append(f"SESSION_BROKER_WAIT_REPLICAS={os.environ.get('SESSION_BROKER_WAIT_REPLICAS', '1')}")
    return "ready. Producers use:  export " + " ".join(exports)


def cmd_demo(args) -> int:
    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.ops.demo import run_demo

    return run_demo(args.state_dir)


def cmd_web(args) -> int:
    """The one web front (Jobs page, /metrics and the REST API), its pages behind a login."""
    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.ops.front import serve

    serve(args.address, args.port, require_pages=True)
    return EXIT_OK


def cmd_api(args) -> int:
    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.ops.front import serve

    serve(args.host, args.port, args.certfile, args.keyfile, require_keys=True)
    return EXIT_OK


def bench_script() -> str | None:
    """``benchmarks/run.py`` of a checkout: the current directory's, else the one this package
    was imported from. None from an installed package (benchmarks/ is not installed)."""
    here = Path(__file__).resolve().parents[2]  # the checkout's root, when it is one
    for root in (Path.cwd(), here):
        script = root / "benchmarks" / "run.py"
        if script.is_file():
            return str(script)
    return None


def cmd_bench(args) -> int:
    script = bench_script()
    if script is None:
        print(
            "session-broker: `bench` needs a checkout of the repository: the benchmarks "
            "(benchmarks/run.py) are not part of the installed package. Clone it, then run "
            "`./run.sh bench` (or `session-broker bench`) from its root",
            file=sys.stderr,
        )
        return EXIT_USAGE
    sys.argv = [script, *(["--quick"] if args.quick else []), "--workers", str(args.workers)]
    runpy.run_path(script, run_name="__main__")
    return EXIT_OK


def cmd_acl(args) -> int:
    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.core.config import get_settings

    # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
    from session_broker.ops.acl import recipe

    db = args.db if args.db is not None else int(urlsplit(get_settings().url).path.lstrip("/") or 0)
    passwords = None
    if args.password_file:
        # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
        from session_broker.ops.acl import read_passwords

        passwords = read_passwords(Path(args.password_file))
    print("\n".join(recipe(args.tenant, db, passwords)))
    return EXIT_OK


def _ops(name):
    def run(args):
        # lazy: the CLI loads a command's modules only when it runs: --help and the read-only views stay free of Celery, Qiskit and the web stack
        from session_broker.ops import commands as ops

        return getattr(ops, name)(args)

    return run


COMMANDS = {
    "up": cmd_up,
    "worker": cmd_worker,
    "flower": cmd_flower,
    "web": cmd_web,
    "api": cmd_api,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "sessions": _ops("sessions"),
    "session": _ops("session"),
    "jobs": _ops("jobs"),
    "job": _ops("job"),
    "workers": _ops("workers"),
    "acl": cmd_acl,
}

if __name__ == "__main__":
    sys.exit(main())
