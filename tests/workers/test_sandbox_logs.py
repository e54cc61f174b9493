"""The job process's output as /logs shows it (sandbox._tail): the job's own messages, not TensorFlow's start-up
chatter (absl lines of any severity, CUDA probing) nor the host's install paths."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig

from tests.service.conftest import ROOT
from workers.sandbox import LOG_NAME, _tail, child_environment

GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)

# a job-like process: imports TensorFlow (its start-up lines), warns and fails inside Keras (frames in site-packages)
FAILING_JOB = """
import numpy as np, keras
print("job: starting the fit", flush=True)
model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(3)])
model.compile("adam", "mse")
model.fit(np.zeros((4, 5)), np.zeros((4, 3)), verbose=0)
"""


def test_the_tail_keeps_the_jobs_messages_without_start_up_noise_or_install_paths(tmp_path):
    scratch = tmp_path / "attempt"
    scratch.mkdir()
    env = {**child_environment(scratch), "TF_CPP_MIN_LOG_LEVEL": "0"}  # every start-up line TensorFlow writes
    with open(scratch / LOG_NAME, "wb") as log:
        r = subprocess.run(
            [sys.executable, "-c", FAILING_JOB], cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300
        )
    assert r.returncode == 1
    raw = (scratch / LOG_NAME).read_text()
    site_packages = sysconfig.get_paths()["purelib"]
    assert GLOG.search(raw) and site_packages in raw  # what the job process really wrote

    tail = _tail(scratch / LOG_NAME)
    assert "job: starting the fit" in tail and "ValueError" in tail  # the job's own messages stay
    assert "Traceback (most recent call last)" in tail and "<site-packages>/keras/" in tail
    assert not GLOG.search(tail), tail  # no absl / CUDA start-up lines, whatever their severity
    for place in (site_packages, sys.prefix, str(ROOT), str(scratch)):
        assert place not in tail, place
