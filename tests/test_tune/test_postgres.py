"""Two ``restorekit tune`` workers sharing one study through a real PostgreSQL server.

The fixture starts a throw-away server (Debian's ``postgresql`` package: ``initdb`` and
``pg_ctl`` on a temporary folder and a free port, as the ``postgres`` user when run as
root) and skips with the reason where it cannot.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from restorekit.tune import study as study_module


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/postgres`` of a server living for one test."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    folder = tmp_path_factory.mktemp("pg")
    data = folder / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except (ImportError, KeyError):
            runuser = None
        if runuser is None:
            pytest.skip("running as root without a 'postgres' user to start PostgreSQL as")
        shutil.chown(folder, "postgres")
        os.chmod(folder, 0o700)
        for parent in folder.parents:  # the server must reach its folder
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        as_user = [runuser, "-u", "postgres", "--"]
    port = _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)

    done = run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    if done.returncode != 0:
        pytest.skip(f"initdb failed: {done.stderr.strip().splitlines()[-1:]}")
    done = run(pg_ctl, "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
               f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start")
    if done.returncode != 0:
        pytest.skip(f"PostgreSQL did not start: {done.stderr.strip()[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")


def test_two_workers_share_a_study_through_postgresql(
        postgres_url: str, tiny_space: Path, lol: Path, tmp_path: Path,
        tune_argv: Callable[..., list[str]]) -> None:
    from test_study import check_distinct_trials, run_two_workers

    studies = tmp_path / "studies"
    run_two_workers(tune_argv(tiny_space, studies, "--data", str(lol), "--trials", "4",
                              "--storage", postgres_url, "--study", "pg"))
    study = study_module.load_study("pg", postgres_url, studies)
    check_distinct_trials(study, 4)
    assert study.user_attrs["test"]  # the last worker evaluated the best trial on test
