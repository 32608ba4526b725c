"""Faults injected, each bounded in time: a job process SIGKILLed mid-stage for every stage and then rerun, hosts
that reset connections or trickle bytes, a data root that cannot be written, a disk that fills up mid-write.

What must hold: a killed stage leaves only whole files where readers look and its rerun ends with the rows of an
uninterrupted run; a bad host costs its own rows, not the crawl; a storage failure is one line on stderr, exit 1,
nothing half-written. docs/reliability.md lists every fault and its test.

The jobs run against the session's token-authenticated Ray head on 127.0.0.1 (conftest ``cluster_head``), as jobs on
a cluster do: the uninterrupted reference run is the session's ``jobs/run_all.py`` submitted with ``ray job submit``
(conftest ``full_run``, tests/helpers/full_run.py; tests/test_end_to_end.py checks its outputs); each killed job
is a driver process connected to the head (``RAY_ADDRESS``), SIGKILLed as a crash or an OOM kill would end it. Ray
then ends that job's actors; the rerun starts once the head reports none of them alive. Each killed stage runs on a
data root of its own, holding copies of the reference run's datasets that the stage reads, so every test passes
alone (``pytest tests/test_faults.py::test_kill_score_then_rerun``). The kill tests and the disk-full faces run are
``slow``; the rest are not.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from helpers.datasets import copy_datasets
from helpers.full_run import RUN_ID
from helpers.full_run import SETS as FULL_SETS
from helpers.http import RawServer, Reply, serve
from helpers.images import solid_jpeg
from pipeline.store import DataRoot

REPO = Path(__file__).resolve().parents[1]
# The killed jobs run with the whole-pipeline run's overrides (tests/helpers/full_run.py) and a quicker model:
# the killed train run is compared with the uninterrupted one by its epochs, not its weights.
SETS = [
    *FULL_SETS,
    "train.backbone=small_cnn",
    "train.image_size=32",
    "train.epochs=3",
    # Staff pages (Selenium) are left out of the killed scrape run: its rerun is compared with the reference by
    # its posts; the staff crawl's kill-and-rerun is covered at crawl level by tests/test_scrape_crawl_staff.py and
    # tests/test_scrape_crawl.py.
    "scrape.staff=[]",
]
JOB_TIMEOUT_S = 240
DATASETS = ("fetches", "posts", "staff", "faces", "labels/selfie", "labels/department", "scores")
# What each killed stage reads: copied from the reference run into the test's own data root.
SCRAPED = ("fetches", "posts", "staff", "images")
INPUTS = {
    "faces": SCRAPED,
    "labels": (*SCRAPED, "faces"),
    "train": (*SCRAPED, "faces", "labels"),
    "score": (*SCRAPED, "faces", "labels", f"models/{RUN_ID}"),
}


# ------------------------------------------------------------------------------------------------ job runner
def _end(pids: list[int]) -> None:
    """SIGKILL the given processes (ones this test started: the job and what it spawned) that are still alive."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _get(head, path: str):
    req = urllib.request.Request(head.dashboard_url + path, headers=head.headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def wait_job_ended(head, driver_pid: int, timeout: float = 60.0) -> None:
    """Block until the head reports no live actor of the job whose driver was ``driver_pid`` (bounded). Detached
    actors (Ray Data's statistics and autoscaling coordinators, made by the first job that needs them) outlive
    every job by design and are not waited for."""
    jobs = [j for j in _get(head, "/api/jobs/") if str((j.get("driver_info") or {}).get("pid")) == str(driver_pid)]
    if not jobs:
        return  # killed before it connected: it has no actors
    job_id = jobs[0]["job_id"]
    query = f"/api/v0/actors?detail=true&filter_keys=job_id&filter_predicates=%3D&filter_values={job_id}"
    query += "&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
    deadline = time.monotonic() + timeout
    while alive := [a["class_name"] for a in _get(head, query)["data"]["result"]["result"] if not a.get("is_detached")]:
        assert time.monotonic() < deadline, f"job {job_id}: {alive} still alive {timeout:.0f}s after its driver died"
        time.sleep(0.25)


def run_job(
    stage: str,
    root: Path,
    *extra: str,
    head,
    kill_when: Callable[[], bool] | None = None,
    env: dict | None = None,
    timeout: float = JOB_TIMEOUT_S,
) -> tuple[int, bool, str]:
    """Run ``jobs/<stage>.py`` on ``root`` as a driver of ``head``; SIGKILL it as soon as ``kill_when()`` is true,
    then wait until Ray has ended the job's actors. Returns (exit code, killed, log)."""
    log = root.parent / f"{stage}-{time.monotonic_ns()}.log"
    cmd = [sys.executable, str(REPO / "jobs" / f"{stage}.py"), "--config", str(REPO / "configs" / "test.yaml")]
    cmd += ["--data-root", str(root)] + [a for s in SETS for a in ("--set", s)] + list(extra)
    env = head.driver_env(env)
    with open(log, "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    killed, spawned = False, []
    deadline = time.monotonic() + timeout
    try:
        while p.poll() is None:
            assert time.monotonic() < deadline, f"{stage} ran past {timeout}s:\n{log.read_text()[-3000:]}"
            if kill_when is not None and kill_when():
                try:
                    spawned = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGKILL)  # the job's driver process, as a crash or an OOM kill would
                    killed = True
                break
            time.sleep(0.05)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        _end(spawned)  # anything the driver itself started (its Ray processes live under the head)
    if killed:
        wait_job_ended(head, p.pid)
    return p.returncode, killed, log.read_text(errors="replace")


def assert_whole_files(root: Path) -> None:
    """Every Parquet file a reader sees is whole; every stored image is named by its own content's sha256."""
    dr = DataRoot(str(root))
    for ds in DATASETS:
        for path in dr.part_files(ds):
            pq.read_table(path)  # raises on a half-written file
    images = root / "images"
    for f in images.rglob("*") if images.exists() else []:
        if f.is_file() and not f.name.startswith("."):
            assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name, f


def _rows(root: Path, ds: str, cols: list[str]) -> list[tuple]:
    t = DataRoot(str(root)).read(ds, columns=cols)
    return sorted(zip(*[t.column(c).to_pylist() for c in cols], strict=True))


def _parts(root: Path, ds: str) -> Callable[[], bool]:
    dr = DataRoot(str(root))
    return lambda: bool(dr.part_files(ds))


# ------------------------------------------------------------------------------------------------ kill every stage
@pytest.fixture(scope="module")
def fault_head(cluster_head):
    """The session's Ray head (2 CPUs on 127.0.0.1, token authentication on, as ``ray start --head`` sets it)."""
    return cluster_head


@pytest.fixture(scope="module")
def job_env(demo_site) -> dict:
    env = dict(os.environ)
    env.update(DEMO_BASE_URL=demo_site.base_url, DEMO_N_POSTS="240", RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def reference(full_run) -> Path:
    """One uninterrupted run of the five stages, the yardstick of every killed run: the session's
    ``jobs/run_all.py`` submitted with ``ray job submit --working-dir .`` (tests/helpers/full_run.py), also the
    test that the whole pipeline runs as one submitted job. Its model has the run id the killed score run needs
    (``RUN_ID``)."""
    return full_run.root


def inputs_of(stage: str, reference: Path, tmp_path: Path) -> Path:
    """A fresh data root holding copies of the reference run's datasets that ``stage`` reads."""
    root = tmp_path / "data"
    copy_datasets(reference, root, INPUTS[stage])
    return root


@pytest.mark.slow
def test_kill_scrape_then_rerun(reference, job_env, fault_head, tmp_path):
    root = tmp_path / "data"
    code, killed, log = run_job("scrape", root, head=fault_head, env=job_env, kill_when=lambda: _parts(root, "posts")())
    assert killed and code == -signal.SIGKILL, log[-3000:]
    assert_whole_files(root)
    partial = len(_rows(root, "posts", ["site", "item_id"]))
    assert 0 < partial < len(_rows(reference, "posts", ["site", "item_id"]))
    code, _, log = run_job("scrape", root, head=fault_head, env=job_env)
    assert code == 0, log[-3000:]
    assert_whole_files(root)
    cols = ["site", "item_id", "status", "reason", "image_sha256"]
    assert _rows(root, "posts", cols) == _rows(reference, "posts", cols)
    urls = [r[0] for r in _rows(root, "fetches", ["url"])]
    assert len(urls) == len(set(urls)), "a URL has two fetches rows after the rerun"


@pytest.mark.slow
def test_kill_faces_then_rerun(reference, job_env, fault_head, tmp_path):
    root = inputs_of("faces", reference, tmp_path)
    code, killed, log = run_job("faces", root, head=fault_head, env=job_env, kill_when=_parts(root, "faces"))
    assert killed and code == -signal.SIGKILL, log[-3000:]
    assert_whole_files(root)
    cols = ["image_sha256", "kept", "n_faces", "reason"]
    assert 0 < len(_rows(root, "faces", cols)) < len(_rows(reference, "faces", cols))
    code, _, log = run_job("faces", root, head=fault_head, env=job_env)
    assert code == 0, log[-3000:]
    assert_whole_files(root)
    assert _rows(root, "faces", cols) == _rows(reference, "faces", cols)


@pytest.mark.slow
def test_kill_labels_then_rerun(reference, job_env, fault_head, tmp_path):
    root = inputs_of("labels", reference, tmp_path)
    dr = DataRoot(str(root))
    code, killed, log = run_job("labels", root, head=fault_head, env=job_env, kill_when=lambda: dr.exists("labels"))
    assert killed and code == -signal.SIGKILL, log[-3000:]
    assert_whole_files(root)
    code, _, log = run_job("labels", root, head=fault_head, env=job_env)
    assert code == 0, log[-3000:]
    assert_whole_files(root)
    for task in ("selfie", "department"):  # the inputs hold the reference's staff, so both tasks are labelled
        ours, ref = DataRoot(str(root)).read(f"labels/{task}"), DataRoot(str(reference)).read(f"labels/{task}")
        assert ours.num_rows > 0 and ours.sort_by("item_id").equals(ref.sort_by("item_id")), task
        assert len(DataRoot(str(root)).part_files(f"labels/{task}")) == 1, task


@pytest.mark.slow
def test_kill_train_then_resume(reference, job_env, fault_head, tmp_path):
    root = inputs_of("train", reference, tmp_path)
    dr = DataRoot(str(root))

    def checkpointed() -> bool:
        return any(n.startswith("checkpoint") for n in dr.list_dir("models", RUN_ID, "checkpoints"))

    run = ("--set", f"train.run_id={RUN_ID}")
    code, killed, log = run_job("train", root, *run, head=fault_head, env=job_env, kill_when=checkpointed)
    assert killed and code == -signal.SIGKILL, log[-3000:]
    assert not dr.exists("models", RUN_ID, "model.json"), "killed before export, yet exported"
    code, _, log = run_job("train", root, *run, "--resume", head=fault_head, env=job_env)
    assert code == 0, log[-3000:]
    d = dr.model_dir(RUN_ID)
    assert [h["epoch"] for h in dr.read_json(f"{d}/metrics.json")["history"]] == [0, 1, 2]
    assert dr.read_json(f"{d}/model.json")["model_id"] == RUN_ID
    assert dr.fs.get_file_info(f"{d}/model.pt").size > 0


@pytest.mark.slow
def test_kill_score_then_rerun(reference, job_env, fault_head, tmp_path):
    root = inputs_of("score", reference, tmp_path)
    code, killed, log = run_job("score", root, head=fault_head, env=job_env, kill_when=_parts(root, "scores"))
    assert killed and code == -signal.SIGKILL, log[-3000:]
    assert_whole_files(root)
    code, _, log = run_job("score", root, head=fault_head, env=job_env)
    assert code == 0, log[-3000:]
    assert_whole_files(root)
    keys = _rows(root, "scores", ["image_sha256", "model_id"])
    assert len(keys) == len(set(keys)) and {m for _, m in keys} == {RUN_ID}
    ours = [s for s, _ in keys]
    ref = sorted({s for s, _ in _rows(reference, "scores", ["image_sha256", "model_id"])})
    assert ours == ref  # every image scored exactly once


# ------------------------------------------------------------------------------------------------ hosts that misbehave
def _reset(conn: socket.socket) -> None:
    """Close with linger 0 once the request is in: the client sees ECONNRESET."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _trickle(gap: float = 0.1, max_bytes: int = 80):
    """A 200 whose body comes one byte per ``gap`` s, for at most ``max_bytes`` bytes."""

    def talk(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(max_bytes):
            conn.sendall(b"\xff")
            time.sleep(gap)

    return talk


@pytest.fixture
def bad_hosts():
    """Raw servers on 127.0.0.1 for 20 connections each: one resets, one trickles."""
    hosts = {"reset": RawServer(_reset, max_conns=20), "trickle": RawServer(_trickle(), max_conns=20)}
    yield hosts
    for h in hosts.values():
        h.close()


def _http_cfg(**kw):
    from pipeline.config import HttpConfig, RetryConfig

    retry = RetryConfig(attempts=2, backoff_s=0.01, backoff_max_s=0.05, jitter_s=0.0)
    base = dict(allow_private_addresses=True, connect_timeout_s=1.0, read_timeout_s=0.5, total_timeout_s=1.0)
    return HttpConfig(**{**base, **kw}, retry=retry)


def test_reset_and_trickling_hosts_time_out_with_reasons(bad_hosts):
    """The client: a reset is a connection_error after its retries; a byte-by-byte body (each byte inside the read
    timeout, the whole slower than total_timeout_s) is a timeout once total_timeout_s is spent."""
    from pipeline.scrape.net.http import HttpClient

    client = HttpClient(_http_cfg(), ["127.0.0.1"])
    t0 = time.monotonic()
    r = client.fetch_image(f"{bad_hosts['reset'].base}/a.jpg")
    assert (r.status, r.reason) == ("error", "connection_error") and time.monotonic() - t0 < 5
    t0 = time.monotonic()
    r = client.fetch_image(f"{bad_hosts['trickle'].base}/b.jpg")
    took = time.monotonic() - t0
    assert (r.status, r.reason) == ("error", "timeout"), r
    assert 0.9 < took < 3.0, took  # total_timeout_s = 1, read timeout 0.5 never fires: a byte comes every 0.1 s


def test_crawl_moves_on_past_bad_hosts_and_reports_them(ray_session, bad_hosts, tmp_path):
    """A feed whose images live on a resetting host and a trickling host: the crawl finishes, the good images are
    stored, the bad ones are error rows naming their hosts in ``fetches``, and the summary counts the reasons."""
    from pipeline.config import parse_config
    from pipeline.scrape.crawl import crawl

    good = Reply(solid_jpeg(48, 40, (120, 30, 200)), "image/jpeg")
    bases = {"good": "", "reset": bad_hosts["reset"].base, "trickle": bad_hosts["trickle"].base}

    def feed(handler) -> Reply:
        posts = [
            {"id": f"{kind}{i}", "image_url": f"{bases[kind] or handler.base}/img/{kind}{i}.jpg",
             "user": {"id": "u", "followers": 10}, "likes": i, "tags": [], "posted_at": "2020-01-01T00:00:00Z"}
            for kind in ("good", "reset", "trickle") for i in range(2)
        ]  # fmt: skip
        return Reply(json.dumps({"posts": posts, "next_page": None}).encode(), "application/json")

    with serve({"/api/feed": feed, "/img/good0.jpg": good, "/img/good1.jpg": good}) as srv:
        http = _http_cfg().model_dump()
        cfg = parse_config(
            {
                "data_root": str(tmp_path / "data"),
                "scrape": {
                    "num_actors": 1,
                    "threads_per_actor": 6,
                    "http": {**http, "requests_per_second_per_host": 100, "max_concurrency_per_host": 4},
                    "feeds": [{"name": "f", "adapter": "json", "base_url": srv.base, "hashtags": ["selfie"]}],
                    "allowed_domains": ["127.0.0.1"],
                },
            }
        )
        t0 = time.monotonic()
        summary = crawl(cfg)
        assert time.monotonic() - t0 < 60
    root = DataRoot(cfg.data_root)
    posts = {r["item_id"]: r for r in root.read("posts").to_pylist()}
    assert len(posts) == 6
    assert all(
        posts[f"good{i}"]["status"] == "ok" and root.has_image(posts[f"good{i}"]["image_sha256"]) for i in (0, 1)
    )
    assert {posts[f"reset{i}"]["reason"] for i in (0, 1)} == {"connection_error"}
    assert {posts[f"trickle{i}"]["reason"] for i in (0, 1)} == {"timeout"}
    assert summary["errors_by_reason"] == {"connection_error": 2, "timeout": 2}
    fetches = [r for r in root.read("fetches").to_pylist() if r["kind"] == "image" and r["status"] == "error"]
    by_port = {(r["host"], int(r["url"].split(":")[2].split("/")[0]), r["reason"]) for r in fetches}
    assert by_port == {
        ("127.0.0.1", bad_hosts["reset"].port, "connection_error"),
        ("127.0.0.1", bad_hosts["trickle"].port, "timeout"),
    }


# ------------------------------------------------------------------------------------------------ storage failures
@pytest.fixture
def fresh_log(monkeypatch):
    """The facerank log handler binds sys.stderr once; rebind it to this test's captured stderr."""
    from pipeline.runtime import log

    monkeypatch.setattr(log, "handlers", [])


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err[-3000:]
    return lines[-1]


def test_unwritable_data_root_is_one_clear_line(ray_session, demo_site, tmp_path, monkeypatch, capsys, fresh_log):
    """A data root that cannot be created (its parent is a regular file: ENOTDIR, which root cannot bypass the way
    it bypasses chmod): the scrape stage exits 1 with one line naming the data root, and nothing is written."""
    from pipeline.cli import main

    monkeypatch.setenv("DEMO_BASE_URL", demo_site.base_url)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")
    root = blocker / "data"
    args = ["stage", "scrape", "--config", str(REPO / "configs" / "test.yaml"), "--data-root", str(root)]
    t0 = time.monotonic()
    code = main(args + ["--set", "scrape.staff=[]", "--set", "scrape.num_actors=1", "--set", "scrape.batch_rows=20"])
    assert time.monotonic() - t0 < 120
    line = _one_error_line(capsys.readouterr().err)
    assert code == 1 and line.startswith("error: ") and "Not a directory" in line and str(root) in line, line
    assert blocker.read_text() == "a regular file" and list(tmp_path.iterdir()) == [blocker]


@pytest.mark.slow  # the faces stage twice, through the CLI
def test_disk_full_mid_write_leaves_nothing_half_written(ray_session, tmp_path, monkeypatch, capsys, fresh_log):
    """ENOSPC halfway through a part file (pq.write_table patched to write half a file, then fail): the faces stage
    exits 1 with one line, no part file is visible, the half file sits in _tmp where readers never look, and the
    rerun with space again writes every row."""
    import pipeline.store as store
    from helpers.score_model import add_posts, face_images, no_face_images
    from pipeline.cli import main

    root_dir = tmp_path / "data"
    root = DataRoot(str(root_dir))
    shas = add_posts(root, face_images(2) + no_face_images()[:1])
    real_write = store.pq.write_table

    def disk_full(table, where, filesystem=None, **kw):
        with filesystem.open_output_stream(where) as out:
            out.write(b"PAR1" + b"\0" * 100)  # the first bytes made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.pq, "write_table", disk_full)
    args = ["stage", "faces", "--data-root", str(root_dir), "--config", str(REPO / "configs" / "test.yaml")]
    args += ["--set", "faces.num_actors=1", "--set", "faces.max_side=320"]
    assert main(args) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(root_dir) in line, line
    assert root.part_files("faces") == [] and not root.has("faces")
    assert [p.name for p in (root_dir / "faces" / "_tmp").iterdir()]  # the half file, invisible to readers
    posts_before = _rows(root_dir, "posts", ["site", "item_id", "image_sha256"])

    monkeypatch.setattr(store.pq, "write_table", real_write)
    assert main(args) == 0
    assert sorted(DataRoot(str(root_dir)).done_keys("faces")) == sorted(shas)
    assert _rows(root_dir, "posts", ["site", "item_id", "image_sha256"]) == posts_before
    assert_whole_files(root_dir)


def test_disk_full_during_whole_dataset_replace_keeps_the_old_version(tmp_path, monkeypatch):
    """ENOSPC while ``replace`` streams a new labels file: readers still see the old file, whole."""
    import pyarrow as pa

    import pipeline.store as store

    root = DataRoot(str(tmp_path))
    root.replace("labels/selfie", [{"item_id": "old", "status": "ok"}])

    class FullWriter(pq.ParquetWriter):
        def write_table(self, table, row_group_size=None):
            super().write_table(table, row_group_size)
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.pq, "ParquetWriter", FullWriter)
    batches = (pa.Table.from_pylist([{"item_id": f"new{i}"}]) for i in range(3))
    with pytest.raises(OSError) as err:
        root.replace("labels/selfie", batches)
    assert err.value.errno == errno.ENOSPC
    assert root.read("labels/selfie", columns=["item_id"]).column(0).to_pylist() == ["old"]
    assert_whole_files(tmp_path)
