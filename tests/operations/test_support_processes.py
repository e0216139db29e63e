"""The servers tests start die with the test run, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.processes import group_members, kill_group, spawn
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]

# A test run whose only test holds a Moorage server (two workers) and a docker-registry
# open, after writing their process group ids where the outer test reads them.
_HELD_RUN = textwrap.dedent(
    """
    import os
    import threading
    from pathlib import Path

    import pytest

    from tests.support.distribution import Distribution
    from tests.support.server import RegistryProcess


    @pytest.fixture
    def servers(tmp_path):
        with RegistryProcess(tmp_path / "data", workers=2).start() as moorage:
            with Distribution(tmp_path / "upstream").start() as upstream:
                yield moorage, upstream


    def test_hold(servers):
        groups = " ".join(str(server.process.pid) for server in servers)
        Path(os.environ["HELD_GROUPS"]).write_text(groups)
        threading.Event().wait()  # until the run is killed
    """
)


@pytest.mark.tools("docker-registry")
def test_a_test_run_killed_with_sigkill_leaves_no_server_behind(tmp_path: Path) -> None:
    (tmp_path / "test_held.py").write_text(_HELD_RUN)
    groups_file = tmp_path / "groups"
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "HELD_GROUPS": str(groups_file),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-p", "no:xdist", "--rootdir", str(tmp_path), str(tmp_path / "test_held.py")]
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - handed to the child process
    run = spawn(command, cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    groups: list[int] = []
    try:
        wait_until(
            lambda: groups_file.exists() and groups_file.read_text(),
            timeout=180,
            message=lambda: f"the servers to start:\n{(tmp_path / 'run.log').read_text()}",
        )
        groups += [int(pid) for pid in groups_file.read_text().split()]
        moorage, upstream = (group_members(pgid) for pgid in groups)
        assert len(moorage) >= 3, moorage  # the supervisor and its two workers
        assert upstream, upstream

        os.kill(run.pid, signal.SIGKILL)
        run.wait(30)
        wait_until(
            lambda: not any(group_members(pgid) for pgid in groups),
            timeout=60,
            message=lambda: f"the servers to die: {[group_members(pgid) for pgid in groups]}",
        )
    finally:
        kill_group(run)
        for pgid in groups:
            for member in group_members(pgid):
                member.kill()
