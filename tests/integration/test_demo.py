"""Issue 4: `session-broker demo` runs every example of the guide and prints what it prints."""

import os
import subprocess
import sys


def test_demo_runs_every_guide_example(cluster, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "session_broker.ops.cli", "demo", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SESSION_BROKER_URL": cluster.url},
    )
    text = out.stdout
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for expected in (
        "status before any job: Pending",
        "status while active:   In progress, accepting new jobs",
        "status right after the with block: In progress, not accepting new jobs",
        "job2: CANCELLED | session: Closed",  # job1 may have started: it then finishes
        ">>> Quasi-probability distribution from the sampler job:",
        ">>> Expectation value from the estimator job:",
        "'backend_name': 'ibmq_qasm_simulator'",
        "status after closing:  Closed",
        " > Observable: ['IY']",
        " > Metadata: {'variance':",
        "Demo finished: every example of the guide ran.",
    ):
        assert expected in text, f"missing {expected!r} in:\n{text[-4000:]}"
    assert "starting a local stack" not in text  # it used the running worker
    assert list(tmp_path.glob("circuit-*.png"))  # display(circuit.draw("mpl")) saved drawings
