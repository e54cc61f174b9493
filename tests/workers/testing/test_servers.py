"""The process harness shared by the tests and the benchmarks: which command it runs for a checkout, the
environment it gives, and how it waits for a process to answer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from workers.testing.servers import process_env, secateurs_command, wait_until_up


def test_the_command_is_the_one_the_checkouts_pyproject_declares(tmp_path):
    """Another revision's checkout may declare `secateurs` elsewhere: its own entry point runs, from its own tree."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "secateurs"\n[project.scripts]\nsecateurs = "elsewhere.entry:run"\n'
    )
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "__init__.py").write_text("")
    (tmp_path / "elsewhere" / "entry.py").write_text(
        "import sys\ndef run():\n    print('ran', sys.argv[1:])\n    return 3\n"
    )
    command = secateurs_command("serve", "--port", 1, root=tmp_path)
    assert command[0] == sys.executable and command[-3:] == ["serve", "--port", "1"]
    done = subprocess.run(command, cwd=tmp_path, env=process_env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 3 and done.stdout.strip() == "ran ['serve', '--port', '1']"


def test_the_environment_drops_inherited_settings_and_puts_the_checkout_first(tmp_path, monkeypatch):
    monkeypatch.setenv("SECATEURS_DATA_DIR", "/somewhere/else")
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    monkeypatch.setenv("PYTHONPATH", "/other")
    env = process_env(tmp_path, {"SECATEURS_LOG_LEVEL": "warning"})
    assert "SECATEURS_DATA_DIR" not in env and "TF_USE_LEGACY_KERAS" not in env
    assert env["SECATEURS_LOG_LEVEL"] == "warning"
    assert env["PYTHONPATH"].split(":") == [str(tmp_path), "/other"]


def test_waiting_for_a_process_that_exits_says_so_with_its_log():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(4)"])
    with pytest.raises(RuntimeError, match=r"exited with 4(.|\n)*the log"):
        wait_until_up("http://127.0.0.1:9/", proc, timeout=30, log=lambda: "the log")
