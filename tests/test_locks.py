"""One run of a stage per data root: a second run exits 4 with one line, stale locks are taken over, S3 leases."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.locks import LockLostError, StageLockedError, _machine, hold
from pipeline.store import DataRoot

REPO = Path(__file__).resolve().parents[1]
FAST = {"ttl_s": 30.0, "heartbeat_s": 0.1}

HOLDER = """
import sys
from pipeline.locks import hold
from pipeline.store import DataRoot
with hold(DataRoot(sys.argv[1]), sys.argv[2], ttl_s=30, heartbeat_s=0.2):
    print("held", flush=True)
    if sys.argv[3] == "die":
        import os
        os._exit(0)  # killed while holding it: the lock file stays behind
    sys.stdin.read()  # until the test closes stdin
"""


def _holder(root: Path, stage: str, mode: str = "hold") -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), stage, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert p.stdout.readline().strip() == "held"
    return p


def _in_other_thread(root: DataRoot, stage: str) -> str:
    """Try the lock from another thread (a thread that holds it re-enters); returns the error's text."""
    out: list[str] = []

    def take():
        try:
            with hold(root, stage, **FAST):
                out.append("acquired")
        except StageLockedError as err:
            out.append(str(err))

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return out[0]


def _record(root: DataRoot, stage: str) -> dict:
    return json.loads(Path(root.lock_path(stage)).read_bytes())


def test_second_run_of_a_stage_exits_4_with_one_line_before_any_work(tmp_path):
    """Run A holds the labels lock (another process); run B, the real CLI, exits 4 with one line naming A and
    leaves A's part in flight alone. Once A is done the stage runs and cleans what A left in labels/*/_tmp."""
    root_dir = tmp_path / "data"
    a = _holder(root_dir, "labels")
    try:
        in_flight = root_dir / "labels" / "selfie" / "_tmp" / "part-a.parquet"  # A's part, still being written
        in_flight.parent.mkdir(parents=True)
        in_flight.write_bytes(b"PAR1 half of A's part")
        t0 = time.monotonic()
        b = subprocess.run(
            [sys.executable, "-m", "pipeline", "stage", "labels", "--config", "configs/test.yaml"]
            + ["--data-root", str(root_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert b.returncode == 4, b.stderr
        lines = [ln for ln in b.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, b.stderr
        assert lines[0].startswith("error: stage 'labels' is already running") and f"pid {a.pid}" in lines[0]
        assert "Traceback" not in b.stderr and "stage labels: start" not in b.stderr
        assert in_flight.exists()  # B deleted nothing
        assert time.monotonic() - t0 < 30  # before Ray started
    finally:
        a.stdin.close()
        assert a.wait(timeout=30) == 0
    assert not Path(DataRoot(str(root_dir)).lock_path("labels")).exists()  # A released it

    from pipeline.config import load_config
    from pipeline.labels import run
    from pipeline.store import MissingDatasetError

    cfg = load_config(REPO / "configs" / "test.yaml", overrides={"data_root": str(root_dir)})
    with pytest.raises(MissingDatasetError):  # no posts: but the stage took its lock and cleaned first
        run(cfg)
    assert not in_flight.exists()


def test_lock_is_exclusive_reentrant_and_released(tmp_path):
    root = DataRoot(str(tmp_path))
    with hold(root, "fakestage", **FAST) as lease:
        rec = _record(root, "fakestage")
        assert rec["pid"] == os.getpid() and rec["stage"] == "fakestage" and rec["host"] == _machine()["host"]
        assert {"owner", "started", "heartbeat", "ttl_s", "token"} <= set(rec)
        with hold(root, "fakestage", **FAST) as inner:  # the CLI, then the stage's own run: same thread
            assert inner is lease
        err = _in_other_thread(DataRoot(str(tmp_path)), "fakestage")
        assert "already running" in err and "\n" not in err
        first_beat = rec["heartbeat"]
        time.sleep(0.5)
        assert _record(root, "fakestage")["heartbeat"] > first_beat  # the background thread refreshes it
        with hold(root, "otherstage", **FAST):  # another stage on the same root is independent
            pass
    assert not Path(root.lock_path("fakestage")).exists()
    with hold(root, "fakestage", **FAST):  # free again
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    root = DataRoot(str(tmp_path))
    dead = _holder(tmp_path, "fakestage", mode="die")
    assert dead.wait(timeout=30) == 0
    assert _record(root, "fakestage")["pid"] == dead.pid  # left behind by the killed run
    with caplog.at_level(logging.WARNING, logger="facerank"):
        with hold(root, "fakestage", **FAST) as lease:
            assert _record(root, "fakestage")["pid"] == os.getpid()
    assert lease.took_over and f"process {dead.pid}" in lease.took_over
    assert any("took over the stale lock" in r.getMessage() and str(dead.pid) in r.getMessage() for r in caplog.records)


def _write_record(root: DataRoot, stage: str, **fields) -> None:
    now = dt.datetime.now(dt.UTC)
    rec = {"stage": stage, "owner": "someone", **_machine(), "pid": os.getpid(), "started": now.isoformat()}
    rec.update({"heartbeat": now.isoformat(), "ttl_s": 30.0, "token": "t"}, **fields)
    path = Path(root.lock_path(stage))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec))


def test_other_hosts_lock_counts_until_its_heartbeat_is_older_than_the_ttl(tmp_path):
    root = DataRoot(str(tmp_path))
    _write_record(root, "fakestage", host="elsewhere", pid=1)
    with pytest.raises(StageLockedError, match="someone@elsewhere pid 1"):
        with hold(root, "fakestage", **FAST):
            pass
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    _write_record(root, "fakestage", host="elsewhere", pid=1, heartbeat=old)
    with hold(root, "fakestage", **FAST) as lease:
        assert "heartbeat is 3600s old" in lease.took_over


def test_live_holder_on_this_machine_is_never_taken_over(tmp_path):
    """Same host, its process alive (this one, started when it says): an old heartbeat does not make it stale."""
    import psutil

    root = DataRoot(str(tmp_path))
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    _write_record(root, "fakestage", heartbeat=old, pid_started=psutil.Process().create_time())
    with pytest.raises(StageLockedError, match="already running"):
        with hold(root, "fakestage", **FAST):
            pass


def test_a_live_holder_of_this_hostname_but_another_boot_waits_for_its_ttl(tmp_path):
    """Two hosts may share a hostname and the initial pid namespace's link: another boot id is another machine,
    whose lock counts until its heartbeat is older than the ttl (it used to be taken over at once as 'rebooted')."""
    root = DataRoot(str(tmp_path))
    _write_record(root, "fakestage", boot_id="boot-of-another-host")  # this host's name and pid namespace, live
    with pytest.raises(StageLockedError, match="already running"):
        with hold(root, "fakestage", **FAST):
            pass
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    _write_record(root, "fakestage", boot_id="boot-of-another-host", heartbeat=old)
    with hold(root, "fakestage", **FAST) as lease:
        assert "old (ttl 30s)" in lease.took_over


ROWS = [{"site": "s", "item_id": f"a{i}", "status": "ok"} for i in range(3)]


def test_a_run_whose_lock_was_taken_over_is_fenced_off_at_its_next_write(tmp_path):
    """A run whose lock another run took over, or whose heartbeat could not be written within the ttl, cannot write
    or commit another part: the write raises LockLostError (exit 4) and leaves nothing behind."""
    root = DataRoot(str(tmp_path))
    with pytest.raises(LockLostError, match="another run took it over"):
        with hold(root, "fakestage", ttl_s=30, heartbeat_s=10):
            root.write_part("posts", ROWS)
            _write_record(root, "fakestage", host="elsewhere", token="theirs")  # another run's takeover
            root.write_part("posts", ROWS)
    assert root.read("posts").num_rows == 3 and not root.list_dir("posts", "_tmp")
    with pytest.raises(LockLostError, match="could not be written for over 30s"):
        with hold(root, "fakestage2", ttl_s=30, heartbeat_s=10) as lease:
            lease.renewed -= 31  # its heartbeats failed for 31 s (an unreachable lock store, a paused process)
            root.write_bytes_atomic(root.image_path("ab" * 32), b"bytes")
    assert not root.has_image("ab" * 32) and root.read("posts").num_rows == 3
    with hold(root, "fakestage3", **FAST):  # a lease that is still ours writes
        root.write_part("posts", ROWS)
    assert root.read("posts").num_rows == 6


def test_a_run_whose_lock_was_taken_over_fails_when_it_ends(tmp_path):
    root = DataRoot(str(tmp_path))
    with pytest.raises(LockLostError, match="took over the lock"):
        with hold(root, "fakestage", **FAST):
            _write_record(root, "fakestage", host="elsewhere", token="theirs")  # another run's takeover
            time.sleep(0.5)
    assert _record(root, "fakestage")["token"] == "theirs"  # ours did not remove theirs


def test_s3_lease_is_a_conditional_create(s3_server, caplog):
    from pipeline.locks import _S3Backend

    uri = s3_server("locks-bucket")
    a, b = DataRoot(uri), DataRoot(uri)
    with hold(a, "fakestage", **FAST) as lease:
        assert isinstance(lease.backend, _S3Backend)
        first = lease.backend.read()
        assert "already running" in _in_other_thread(b, "fakestage")  # another run (same thread would re-enter)
        assert lease.backend.create(b"{}") is None  # If-None-Match: * is refused while the lease exists
        time.sleep(0.5)
        assert lease.backend.read().version != first.version  # heartbeats rewrote it (If-Match on our ETag)
    assert lease.backend.read() is None  # released
    with hold(b, "fakestage", **FAST):
        pass

    # a lease from another host whose heartbeat stopped an hour ago is taken over
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    rec = {"stage": "fakestage", "owner": "x", "host": "elsewhere", "pid": 1, "heartbeat": old, "token": "t"}
    assert lease.backend.create(json.dumps(rec).encode())
    with caplog.at_level(logging.WARNING, logger="facerank"):
        with hold(b, "fakestage", **FAST) as taken:
            assert re.fullmatch(r"its heartbeat is 360\ds old \(ttl 30s\)", taken.took_over)  # an hour, and a loaded
            # machine's seconds between writing the record and taking it over
    assert any("took over the stale lock" in r.getMessage() for r in caplog.records)
