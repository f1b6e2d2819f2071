"""What a server keeps under the Bento home, without a server (hosting/home.py): a folder per
server, process records acted on only when their worker is dead, and only on processes that are
provably the ones recorded. (Two real servers on one home: tests/runners/test_vllm_tiny.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from hosting import home


@pytest.fixture()
def bento_home(tmp_path, monkeypatch):
    from bentoml._internal.configuration.containers import BentoMLContainer

    monkeypatch.setenv("EMBED_SERVER_DIR", "")  # restored after the test: claim() sets it
    BentoMLContainer.bentoml_home.set(str(tmp_path))
    yield tmp_path
    BentoMLContainer.bentoml_home.reset()
    BentoMLContainer.prometheus_multiproc_dir.reset()


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def write_record(folder, owner: psutil.Process, processes: list[home.Process]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "processes-vllm-1.json").write_text(json.dumps(
        {"owner": [owner.pid, owner.create_time()], "processes": [list(p) for p in processes]}))


def test_only_a_dead_workers_recorded_processes_are_stopped(bento_home, monkeypatch):
    live_owner, dead_owner, engine, other_engine, reused = sleeper(), sleeper(), sleeper(), sleeper(), sleeper()
    try:
        run = bento_home / "run"
        monkeypatch.setattr(home, "_run_root", lambda: run)
        dead = psutil.Process(dead_owner.pid)
        write_record(run / "1@here", psutil.Process(live_owner.pid), [home.describe(psutil.Process(other_engine.pid))])
        pid, started, name = home.describe(psutil.Process(reused.pid))
        write_record(run / "2@here", dead,
                     [home.describe(psutil.Process(engine.pid)), (pid, started + 1, name)])  # a pid used again
        dead_owner.kill()
        dead_owner.wait()
        assert not dead.is_running()
        stopped = home.stop_orphans(run / "1@here", run / "2@here")
        assert stopped == [engine.pid]
        engine.wait(10)
        assert other_engine.poll() is None and reused.poll() is None and live_owner.poll() is None
        assert (run / "1@here" / "processes-vllm-1.json").exists()  # a live worker's record stays
        assert not (run / "2@here" / "processes-vllm-1.json").exists()
    finally:
        for process in (live_owner, dead_owner, engine, other_engine, reused):
            process.kill()
            process.wait()


def test_a_server_claims_its_own_folder_and_clears_only_dead_servers(bento_home, monkeypatch):
    from bentoml._internal.configuration.containers import BentoMLContainer

    live_server, dead_server, orphan = sleeper(), sleeper(), sleeper()
    try:
        run = bento_home / "run"
        host = home._folder_name(0).split("@", 1)[1]
        for server in (live_server, dead_server):
            folder = run / f"{server.pid}@{host}"
            (folder / "prometheus").mkdir(parents=True)
            described = psutil.Process(server.pid)
            (folder / home.SERVER_FILE).write_text(json.dumps({"pid": server.pid, "started": described.create_time()}))
        write_record(run / f"{dead_server.pid}@{host}", psutil.Process(dead_server.pid),
                     [home.describe(psutil.Process(orphan.pid))])
        (run / f"{dead_server.pid}@another-host").mkdir()  # another machine sharing the home: not ours to judge
        dead_server.kill()
        dead_server.wait()
        mine = home.claim()
        assert mine.name == home._folder_name(psutil.Process().pid) and mine.is_dir()
        assert BentoMLContainer.prometheus_multiproc_dir.get() == str(mine / "prometheus")
        assert home.server_dir() == mine
        assert json.loads((mine / home.SERVER_FILE).read_text())["pid"] == psutil.Process().pid
        assert (run / f"{live_server.pid}@{host}" / "prometheus").is_dir()
        assert not (run / f"{dead_server.pid}@{host}").exists() and (run / f"{dead_server.pid}@another-host").exists()
        orphan.wait(10)  # the dead server's engine was stopped before its folder went
    finally:
        for process in (live_server, dead_server, orphan):
            process.kill()
            process.wait()
