"""/logs of a failed job (issue 10): the end of the job process's output, without TensorFlow's start-up lines and
without the server's install paths, but with the job's own error."""

from __future__ import annotations

import re
import sys
import sysconfig

import numpy as np
import pytest

from tests.service.conftest import ROOT, Server, submit, wait_status
from tests.workers.jobfiles import QUICK_SPEC

GLOG = re.compile(r"^(?:\S+ )?[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # every TensorFlow start-up line is written, as on a host whose TF_CPP_MIN_LOG_LEVEL is not set
    srv = Server(tmp_path_factory.mktemp("logs") / "data", workers=1, env={"TF_CPP_MIN_LOG_LEVEL": "0"}).start()
    yield srv
    srv.stop()


def test_a_failed_jobs_log_keeps_its_error_without_start_up_noise_or_install_paths(server, job_files, tmp_path):
    wrong = tmp_path / "wrong.npz"  # rows the model cannot take: the job fails inside the job process
    np.savez(wrong, x_train=np.zeros((64, 5), "float32"), y_train=np.zeros(64, "int64"))
    with server.client() as c:
        job = submit(c, job_files, QUICK_SPEC, data=wrong).json()
        failed = wait_status(c, job["id"], "failed", timeout=300)
        log = c.get(f"/v1/jobs/{job['id']}/logs").text
    assert "job process output (tail)" in log, log
    assert failed["error"]["message"].split(":")[0] in log  # the job's own error stays
    assert not GLOG.search(log.split("job process output (tail):", 1)[1]), log
    for place in (sysconfig.get_paths()["purelib"], sys.prefix, str(ROOT), str(server.data_dir)):
        assert place not in log, place
