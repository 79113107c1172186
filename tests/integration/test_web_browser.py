"""Flower and the Jobs page in a real (headless) Chromium, against a stack started by the
real ``session-broker up`` command.

Needs Debian's ``chromium`` at /usr/bin/chromium (``apt-get install -y chromium``) and the
``playwright`` Python package; playwright's own browser downloads are never used. Without
them these tests FAIL (they are part of the suite, not optional). Screenshots go to
``tests/artifacts/`` and the final ones to ``docs/`` (flower.png, flower-task.png,
flower-broker.png, jobs-page.png, jobs-session.png, jobs-job.png).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from session_broker.ops.embedded import free_port, wait_for
from tests.conftest import ARTIFACTS, FAST

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
USER, PASSWORD = "admin", "secret"
BACKEND = "ibmq_qasm_simulator"
VIEWPORT = {"width": 1440, "height": 900}


def browser_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return (
            f"{CHROMIUM} is missing: install Debian's Chromium with "
            "`apt-get update && apt-get install -y chromium` (never `playwright install`)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing: pip install -e '.[test]'"
    return None


def require_browser() -> None:
    problem = browser_missing()
    if problem:
        pytest.fail(problem, pytrace=False)


# ---------------------------------------------------------------------- process tree
def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), fields[19]


def descendants(root: int) -> dict[int, str]:
    """Every live process below ``root``: pid -> start time (to tell a reused pid apart)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat:
                parent_of[int(entry)] = stat
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, (ppid, start) in parent_of.items():
            if ppid == pid and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def still_alive(procs: dict[int, str]) -> list[int]:
    return [pid for pid, start in procs.items() if (_proc_stat(pid) or (0, None))[1] == start]


# ---------------------------------------------------------------------- the stack
class Up:
    """``session-broker up`` as a subprocess; its output collected by a thread."""

    def __init__(self, redis_url: str, state_dir: Path):
        self.flower_port, self.web_port = free_port(), free_port()
        env = {
            **os.environ,
            **FAST,
            "SESSION_BROKER_URL": redis_url,
            "SESSION_BROKER_FLOWER_AUTH": f"{USER}:{PASSWORD}",
            "PYTHONUNBUFFERED": "1",
        }
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "session_broker.ops.cli",
                "up",
                "--flower-port",
                str(self.flower_port),
                "--web-port",
                str(self.web_port),
                "--state-dir",
                str(state_dir),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 300):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"`session-broker up` exited with {self.proc.returncode}:\n{self.output}"
                )
            return any(line.startswith("ready.") for line in self.lines)

        wait_for(
            ready,
            timeout,
            f"`session-broker up` to print 'ready.'; output so far:\n{self.output}",
            interval=0.2,
        )

    @property
    def flower(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"


@pytest.fixture(scope="module")
def up(redis_url, tmp_path_factory):
    if browser_missing():  # each test fails with the reason; no stack needed for that
        yield None
        return
    stack = Up(redis_url, tmp_path_factory.mktemp("up-state"))
    try:
        stack.wait_ready()
        stack.children = descendants(stack.proc.pid)
        yield stack
    finally:
        if stack.proc.poll() is None:
            stack.proc.send_signal(signal.SIGTERM)
        try:
            rc = stack.proc.wait(120)
        except subprocess.TimeoutExpired:
            stack.proc.kill()
            for pid in descendants(stack.proc.pid):
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"`session-broker up` ignored SIGTERM for 120 s:\n{stack.output}") from None
        stack._reader.join(10)
    # after the tests: the stack stopped cleanly and left nothing behind
    assert rc == 0, f"`session-broker up` exited with {rc} after SIGTERM:\n{stack.output}"
    assert "stopped: no process left behind." in stack.output
    children = getattr(stack, "children", {})
    assert children, "`session-broker up` had no child processes?"
    try:
        wait_for(lambda: not still_alive(children), 30, "the stack's processes to exit")
    except TimeoutError:
        raise AssertionError(f"processes outlived `session-broker up`: {still_alive(children)}") from None


@pytest.fixture(scope="module")
def browser(up):
    if up is None:
        yield None
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def new_page(browser):
    ctx = browser.new_context(viewport=VIEWPORT, http_credentials={"username": USER, "password": PASSWORD})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    return page


def shot(page, name: str, *docs: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    if docs:
        DOCS.mkdir(exist_ok=True)
        for doc in docs:
            shutil.copyfile(path, DOCS / doc)
    return path


def poll_page(page, url: str, predicate, timeout: float, what: str, before=None):
    """Load ``url`` until ``predicate(page)`` holds (pages that fill in later, or need a reload)."""
    deadline = time.monotonic() + timeout
    while True:
        if before:
            before()
        page.goto(url)
        page.wait_for_load_state("networkidle")
        if predicate(page):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} at {url}")
        page.wait_for_timeout(1000)


def http_get(url: str, auth: bool) -> tuple[int, str]:
    import base64

    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sampler_session(url: str, n_jobs: int, qubits: int = 20, shots: int = 20_000):
    """A session with ``n_jobs`` Sampler jobs on a ``qubits``-qubit circuit (a few seconds each)."""
    import numpy as np
    from qiskit.circuit.library import real_amplitudes

    from session_broker import QiskitRuntimeService, SamplerV2, Session

    circuit = real_amplitudes(qubits, reps=3).decompose()
    circuit.measure_all()
    rng = np.random.default_rng(7)
    session = Session(service=QiskitRuntimeService(url), backend=BACKEND)
    sampler = SamplerV2(mode=session)
    jobs = [sampler.run([(circuit, rng.random(circuit.num_parameters))], shots=shots) for _ in range(n_jobs)]
    return session, jobs


# ---------------------------------------------------------------------- tests
@pytest.mark.timeout(900)
def test_flower_shows_tasks_and_session_queue(up, browser, redis_url):
    require_browser()
    shots = 60_000  # a few seconds a job: the session's queue still holds messages below
    session, jobs = sampler_session(redis_url, 6, shots=shots)
    sid = session.session_id
    try:
        page = new_page(browser)
        # Tasks: the sampler tasks are listed under their job ids (Celery task id = job id)
        first = jobs[0].job_id()
        poll_page(
            page,
            f"{up.flower}/tasks",
            lambda p: p.get_by_text(first).count() > 0,
            180,
            "the session's sampler tasks on Flower's Tasks page",
        )
        row = page.locator("tr", has=page.get_by_text(first)).first
        assert "sampler" in row.inner_text()
        shot(page, "flower-tasks.png")

        # a task's page shows our summary args: job id, session, backend, pubs, shots
        page.goto(f"{up.flower}/task/{first}")
        assert f"job={first} session={sid} backend={BACKEND} pubs=1 shots={shots}" in page.content()
        shot(page, "flower-task.png", "flower-task.png")

        # Broker: Flower lists the queues workers report consuming; the pinned worker consumes
        # the session's queue while the session is active (refresh=1 asks workers again)
        queue = f"sb.session.{sid}"
        poll_page(
            page,
            f"{up.flower}/broker",
            lambda p: p.locator("#queue-table").get_by_text(queue).count() > 0,
            180,
            f"queue {queue} on Flower's Broker page",
            before=lambda: http_get(f"{up.flower}/api/workers?refresh=1", auth=True),
        )
        shot(page, "flower-broker.png", "flower-broker.png")

        for job in jobs:
            job.result(timeout=300)

        def all_succeeded(p) -> bool:
            for job in jobs:
                rows = p.locator("tr", has=p.get_by_text(job.job_id()))
                if rows.count() == 0 or "SUCCESS" not in rows.first.inner_text():
                    return False
            return True

        poll_page(page, f"{up.flower}/tasks", all_succeeded, 120, "the session's tasks to show SUCCESS")
        shot(page, "flower-tasks-done.png", "flower.png")
        page.context.close()
    finally:
        session.close()


@pytest.mark.timeout(900)
def test_jobs_page_session_and_job(up, browser, redis_url):
    require_browser()
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp

    from session_broker import EstimatorV2

    # no auth for /healthcheck; everything else needs the Flower login
    assert http_get(f"{up.web}/healthcheck", auth=False) == (200, "OK")
    assert http_get(f"{up.web}/", auth=False)[0] == 401
    assert http_get(f"{up.web}/metrics", auth=False)[0] == 401

    session, jobs = sampler_session(redis_url, 2, qubits=5, shots=4000)
    sid = session.session_id
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    estimator_job = EstimatorV2(mode=session).run([(qc, [SparsePauliOp("ZZ"), SparsePauliOp("XX")])])
    for job in [*jobs, estimator_job]:
        job.result(timeout=300)
    node = session.details()["worker"]
    assert node, "the session should hold a worker while it is active"

    try:
        page = new_page(browser)
        assert page.goto(up.web + "/").status == 200
        row = page.locator("#sessions tr", has=page.locator(f"a[href='/session/{sid}']"))
        row.wait_for()
        text = row.inner_text()
        assert "In progress, accepting new jobs" in text and node in text and BACKEND in text
        assert page.locator("#workers").get_by_text(node).count() == 1
        shot(page, "jobs-index.png", "jobs-page.png")

        page.locator(f"#sessions a[href='/session/{sid}']").click()
        page.wait_for_url(f"**/session/{sid}")
        details = page.locator("#details").inner_text()
        for key in (
            "backend_name",
            "interactive_timeout",
            "max_time",
            "active_timeout",
            "state",
            "accepting_jobs",
            "started_at",
            "worker",
            "usage_time",
            "jobs",
        ):
            assert key in details, key
        assert node in details and "active" in details
        for job in [*jobs, estimator_job]:
            assert page.locator(f"a[href='/job/{job.job_id()}']").count() == 1
        shot(page, "jobs-session.png", "jobs-session.png")

        jid = jobs[0].job_id()
        page.locator(f"a[href='/job/{jid}']").click()
        page.wait_for_url(f"**/job/{jid}")
        assert page.locator("#job-status").inner_text() == "DONE"
        result = page.locator("#result").inner_text()
        assert "register meas" in result and "4000 shots" in result
        job_table = page.locator("#job").inner_text()
        assert node in job_table and "attempts" in job_table and "created" in job_table
        shot(page, "jobs-job.png", "jobs-job.png")

        page.goto(f"{up.web}/job/{estimator_job.job_id()}")
        result = page.locator("#result").inner_text()
        assert "evs" in result and "(2,)" in result
        shot(page, "jobs-job-estimator.png")

        assert page.goto(f"{up.web}/job/no-such-job").status == 404
        page.context.close()

        status, body = http_get(f"{up.web}/metrics", auth=True)
        assert status == 200
        assert 'session_broker_jobs_total{status="DONE"}' in body
        assert "session_broker_execution_seconds_bucket" in body
    finally:
        session.close()


@pytest.mark.timeout(900)
def test_console_updates_live_filters_pages_and_plots(up, browser, redis_url):
    """The console: live updates without a reload, filters, search by id, pages, a session
    timeline, result plots, latency histograms, Swagger UI from local assets."""
    require_browser()
    from qiskit import QuantumCircuit

    from session_broker import Batch, QiskitRuntimeService, SamplerV2

    bell = QuantumCircuit(2)
    bell.h(0)
    bell.cx(0, 1)
    bell.measure_all()
    service = QiskitRuntimeService(redis_url)
    page = new_page(browser)
    try:
        assert page.goto(up.web + "/").status == 200
        page.wait_for_function("document.getElementById('live-state').textContent.includes('live')")
        page.evaluate("window.__still_the_same_page = 42")

        # 30 jobs in a batch, one of them tagged; the open page shows them without a reload
        with Batch(backend=service.backend(BACKEND)) as batch:
            sampler = SamplerV2(mode=batch)
            jobs = [sampler.run([bell], shots=100) for _ in range(29)]
            sampler.options.environment.job_tags = ["console-tag"]
            tagged = sampler.run([bell], shots=100)
            for job in [*jobs, tagged]:
                job.result(timeout=300)
        page.locator(f"#jobs a[href='/job/{tagged.job_id()}']").wait_for(timeout=60_000)
        assert page.evaluate("window.__still_the_same_page") == 42, "the page reloaded"
        assert int(page.evaluate("document.body.dataset.updates")) >= 1

        # pages of 25, newest first: the newest job on page 1, the oldest on page 2
        assert page.locator("#jobs tbody tr").count() == 25
        page.locator("#jobs-pager a[rel=next]").click()
        page.wait_for_url("**jobs_page=1**")
        page.locator(f"#jobs a[href='/job/{jobs[0].job_id()}']").wait_for()

        # filters: by tag, by session (the batch), by a status nothing has
        page.goto(f"{up.web}/?tag=console-tag")
        assert page.locator("#jobs tbody tr").count() == 1
        assert page.locator(f"#jobs a[href='/job/{tagged.job_id()}']").count() == 1
        page.goto(f"{up.web}/?session={batch.session_id}&status=DONE")
        assert (
            page.locator("#jobs tbody tr").count() == 25
            and page.locator("#jobs-pager a[rel=next]").count() == 1
        )
        page.goto(f"{up.web}/?status=CANCELLED&backend={BACKEND}&session={batch.session_id}")
        assert "No jobs match these filters" in page.locator("main").inner_text()
        page.goto(f"{up.web}/?state=closed")
        assert page.locator(f"#sessions a[href='/session/{batch.session_id}']").count() == 1
        assert page.locator("#sessions tbody tr:not(.row-st-closed)").count() == 0

        # search by id: a job, a session, nothing
        page.fill("header input[name=q]", tagged.job_id())
        page.press("header input[name=q]", "Enter")
        page.wait_for_url(f"**/job/{tagged.job_id()}")
        page.fill("header input[name=q]", batch.session_id)
        page.press("header input[name=q]", "Enter")
        page.wait_for_url(f"**/session/{batch.session_id}")
        # the session's timeline: one solid bar per job that ran
        assert page.locator("#timeline svg rect.ran").count() == 30
        shot(page, "console-timeline.png", "jobs-timeline.png")
        page.goto(f"{up.web}/?q=no-such-id")
        assert page.locator("#not-found").count() == 1

        # result plots: every outcome of a Bell job (00 and 11), one point per expectation value
        page.goto(f"{up.web}/job/{tagged.job_id()}")
        assert page.locator("#counts-plot svg rect.pbar").count() == 2
        est = next(j for j in service.jobs(limit=50) if j.primitive_id == "estimator")
        page.goto(f"{up.web}/job/{est.job_id()}")
        assert page.locator("#evs-plot svg circle.pt").count() == 2

        # the latency histograms have bars once jobs ran
        page.goto(up.web + "/")
        assert page.locator("#histograms svg").count() == 2
        assert page.locator("#histograms svg rect.pbar").count() >= 2
        shot(page, "console-index.png", "jobs-page.png")

        # Swagger UI renders from the front's own files (this machine has no CDN)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(up.web + "/docs")
        page.locator(".swagger-ui .info .title").wait_for(timeout=60_000)
        title = page.locator(".swagger-ui .info .title").inner_text()
        assert "session-broker" in title and "OAS 3.1" in title  # the spec was fetched and read
        assert page.locator(".swagger-ui .opblock").count() > 10  # and its operations listed
        assert all(u.startswith(up.web) for u in requests), [u for u in requests if not u.startswith(up.web)]
    finally:
        page.context.close()


@pytest.mark.timeout(600)
def test_flower_shows_a_job_killed_at_its_time_limit_as_failed(up, browser, redis_url, hold):
    """Issue 24, seen in the browser: the supervisor kills the executor of a job that overran
    its hard limit; Flower's task list, the task's page and the worker's Failed count show it."""
    require_browser()
    from session_broker import EstimatorV2, MaxExecutionTimeExceededError, QiskitRuntimeService
    from session_broker.core.config import load_settings
    from session_broker.core.store import Store
    from tests.conftest import slow_pub

    page = new_page(browser)

    def failed_of_our_worker(p) -> int | None:
        # the page shows headers in capitals and wraps long names: compare what it says
        headers = [h.strip().lower() for h in p.locator("#workers-table thead th").all_inner_texts()]
        if "failed" not in headers:
            return None
        col = headers.index("failed")
        for row in p.locator("#workers-table tbody tr").all():
            cells = row.locator("td").all_inner_texts()
            if len(cells) > col and BACKEND in "".join(cells[0].split()):
                return int(cells[col].strip() or 0)
        return None

    try:
        poll_page(
            page, f"{up.flower}/workers", lambda p: failed_of_our_worker(p) is not None, 120, "the workers"
        )
        before = failed_of_our_worker(page)
        job = EstimatorV2(
            mode=QiskitRuntimeService(redis_url).backend(BACKEND), options={"max_execution_time": 1}
        ).run([slow_pub(2)])
        hold(Store(load_settings({"SESSION_BROKER_URL": redis_url})), job.job_id())  # overruns anywhere
        with pytest.raises(MaxExecutionTimeExceededError):
            job.result(timeout=120)
        jid = job.job_id()

        # the task's own page (the task list pages its rows: after the other tests' jobs this
        # one need not be on its first page)
        poll_page(
            page,
            f"{up.flower}/task/{jid}",
            lambda p: "FAILURE" in p.content() and "max_execution_time" in p.content(),
            120,
            "the killed job's page to say FAILURE",
        )
        assert "estimator" in page.content()
        shot(page, "flower-task-failed.png")
        poll_page(
            page,
            f"{up.flower}/workers",
            lambda p: (failed_of_our_worker(p) or 0) > before,
            120,
            "the worker's Failed count to rise",
        )
    finally:
        page.context.close()
