"""Two Ray nodes for real, on one machine: the whole pipeline with its actors on the second node, the second node
killed mid-stage, and the scheduler's runs, with every data root on moto's S3 server on 127.0.0.1.

One cluster for the module (:class:`Cluster`): a token-authenticated head (:func:`pipeline.testing.ray_head`) and
worker nodes that join it (:func:`pipeline.testing.ray_worker_node`: custom resource ``worker_node``, label
``facerank-node=worker``, its own ``--temp-dir``), every listener on 127.0.0.1. The AWS credentials of the S3 server
are in the environment every node starts with (as on a real cluster), so jobs need no ``env_vars`` for them. A test
that needs the second node gets the live one or a new one (:meth:`Cluster.worker`): a killed node is replaced as an
autoscaler would replace it, so every test passes alone and in any order. docs/cluster.md "From one node to N" says
what is checked and what was measured. The cluster tests take minutes (about 9 in all here): they carry the marker
``cluster`` and run with ``make test-cluster``; ``make test`` leaves them out.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from helpers.jobs import running_scheduler, score_jobs
from pipeline.store import DataRoot
from pipeline.testing import RayHead, RayNode, ray_head, ray_worker_node
from pipeline.testing.head import _session_procs

REPO = Path(__file__).resolve().parents[1]
LABEL = {"facerank-node": "worker"}
ON_WORKER_LABEL = "{facerank-node: worker}"
ON_WORKER_RESOURCE = "{worker_node: 0.01}"
# Small and quick: a tiny demo site, no staff pages (no browsers), small_cnn at 32 px, one epoch.
SETS = [
    "scrape.staff=[]",
    "scrape.num_actors=1",
    "scrape.batch_rows=40",
    "faces.num_actors=1",
    "faces.max_side=320",
    "labels.selfie.group_size=10",
    "train.backbone=small_cnn",
    "train.image_size=32",
    "train.epochs=1",
    "train.num_workers=1",
    "train.cpus_per_worker=1",
    "train.run_id=two-nodes",
    "score.num_actors=1",
]
# Every stage that starts actors or Train workers, on the second node: by label or by custom resource.
ON_WORKER = [
    f"ray.placement.scrape.labels={ON_WORKER_LABEL}",
    f"ray.placement.faces.labels={ON_WORKER_LABEL}",
    f"ray.placement.train.resources={ON_WORKER_RESOURCE}",
    f"ray.placement.score.resources={ON_WORKER_RESOURCE}",
]
# The actor classes of each stage as the state API names them (Ray Data: ``MapWorker(MapBatches(FaceActor))``).
STAGE_ACTORS = {"scrape": "HttpWorker", "faces": "FaceActor", "train": "RayTrainWorker", "score": "Scorer"}
# Files a stage writes to the data root; none may stay on a node's own disk (Ray's code upload excluded).
OUTPUT_FILE = re.compile(r"(\.(jpe?g|png|webp|parquet|pt|pth|ckpt|onnx)$)|^(state\.pt|model\.json|checkpoint_.*)$")
SHA = re.compile(r"^[0-9a-f]{64}$")  # a stored image is named by its sha256


# ------------------------------------------------------------------------------------------------ the cluster
# The GCS marks a node dead after this many missed health checks this far apart (Ray's default: 5 of 3 s); the head
# reads them at start. Shorter here so a killed node is noticed in seconds, as the tests wait for it.
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class Cluster:
    """The module's head and its second node: :meth:`worker` gives the live worker node or joins a new one."""

    def __init__(self, head: RayHead, stack: ExitStack):
        self.head, self._stack, self.nodes = head, stack, []

    def alive(self) -> set[str]:
        """Node ids the GCS lists alive (the state API)."""
        nodes = _get(self.head, "/api/v0/nodes?detail=true&limit=100")["data"]["result"]["result"]
        return {n["node_id"] for n in nodes if n["state"] == "ALIVE"}

    def worker(self) -> RayNode:
        alive = self.alive()
        for n in reversed(self.nodes):
            if n.node_id in alive and not n.killed:
                return n
        n = self._stack.enter_context(
            ray_worker_node(self.head, num_cpus=2, resources={"worker_node": 1}, labels=LABEL)
        )
        self.nodes.append(n)
        return n

    def head_node_id(self) -> str:
        workers = {n.node_id for n in self.nodes}
        (hid,) = [i for i in self.alive() if i not in workers]
        return hid

    def pids(self) -> set[int]:
        return {p.pid for p in _session_procs(self.head.pid)} | {p.pid for n in self.nodes for p in n.processes()}


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A 2-CPU head on 127.0.0.1 (token auth); worker nodes join on demand. After ``s3_server``: its credentials
    are in every node's environment."""
    with ExitStack() as stack:
        c = Cluster(stack.enter_context(ray_head(num_cpus=2, env=HEALTH_CHECK)), stack)
        deadline = time.monotonic() + 60
        while not c.alive():  # the job API answers a few seconds before the GCS lists the head's own node
            assert time.monotonic() < deadline, "the head's node never came up"
            time.sleep(0.5)
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.head.dashboard_url, headers=cluster.head.headers)


@pytest.fixture(scope="module")
def site():
    """A tiny demo site of its own on 127.0.0.1: 40 posts (staff pages not crawled: scrape.staff=[])."""
    from pipeline.demo.server import DemoServer

    with DemoServer(host="127.0.0.1", port=0, n_posts=40, staff_per_department=1) as srv:
        yield srv


# ------------------------------------------------------------------------------------------------ helpers
def _entry(job: str, uri: str, sets: list[str]) -> str:
    args = ["python", f"jobs/{job}.py", "--config", "configs/test.yaml", "--data-root", uri]
    return shlex.join(args + [a for s in sets for a in ("--set", s)])


def _submit(client, job: str, uri: str, sets: list[str], env: dict | None = None) -> str:
    env_vars = {"RAY_DEDUP_LOGS": "0", **(env or {})}
    return client.submit_job(
        entrypoint=_entry(job, uri, sets), runtime_env={"working_dir": str(REPO), "env_vars": env_vars}
    )


def _status(client, sid: str) -> str:
    return str(client.get_job_status(sid).value)


def _wait(client, sid: str, timeout_s: float, every=None) -> str:
    """Poll a job to its end (bounded); ``every()`` is called at each poll while it runs."""
    deadline = time.monotonic() + timeout_s
    while (status := _status(client, sid)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.monotonic() > deadline:
            client.stop_job(sid)
            pytest.fail(f"job {sid} still {status} after {timeout_s:.0f}s:\n{client.get_job_logs(sid)[-3000:]}")
        if every:
            every()
        time.sleep(0.5)
    return status


def _get(head: RayHead, path: str):
    req = urllib.request.Request(head.dashboard_url + path, headers=head.headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _actors(cluster: Cluster, client, sid: str) -> list[dict]:
    job_id = client.get_job_info(sid).job_id
    q = f"/api/v0/actors?detail=true&limit=1000&filter_keys=job_id&filter_predicates=%3D&filter_values={job_id}"
    return _get(cluster.head, q)["data"]["result"]["result"]


def _nodes_of(cluster: Cluster, client, sid: str) -> dict[str, set[str]]:
    """stage → the node ids its actors ran on (dead ones included: the state API keeps them)."""
    actors = _actors(cluster, client, sid)
    return {st: {a["node_id"] for a in actors if cls in a["class_name"]} for st, cls in STAGE_ACTORS.items()}


def _listeners_beyond_loopback(pids: set[int]) -> list[str]:
    """``ss -tulnpH`` lines of ``pids`` whose local address is not 127.0.0.1."""
    out = subprocess.run(["ss", "-tulnpH"], capture_output=True, text=True, timeout=30).stdout
    bad = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        local = line.split()[4]
        if owners & pids and not (local.startswith("127.0.0.1:") or local.startswith("[::ffff:127.0.0.1]:")):
            bad.append(line)
    return bad


def _left_on_disk(n: RayNode) -> list[str]:
    """Stage outputs under the node's temp folder, outside Ray's unpacked code upload."""
    found = []
    for f in Path(n.temp_dir).rglob("*"):
        if "runtime_resources" in f.parts or not f.is_file():
            continue
        if OUTPUT_FILE.search(f.name) or SHA.match(f.name):
            found.append(str(f))
    return found


def _rows(root: DataRoot, ds: str, cols: list[str]) -> list[tuple]:
    t = root.read(ds, columns=cols)
    return sorted(zip(*[t.column(c).to_pylist() for c in cols], strict=True), key=repr)


def _keys(root: DataRoot, ds: str, key: str = "image_sha256") -> list[str]:
    return sorted(root.read(ds, columns=[key]).column(key).to_pylist())


# Deterministic columns of each dataset (timestamps, run ids and model metrics aside).
COMPARE = {
    "posts": ["site", "item_id", "user_id", "status", "image_sha256", "likes", "followers"],
    "faces": ["image_sha256", "n_faces", "kept", "reason", "crop_jpeg"],
    "labels/selfie": ["item_id", "image_sha256", "status", "label", "split"],
    "scores": ["image_sha256", "status"],
}


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_run_all_on_the_second_node_equals_one_node(cluster: Cluster, client, site, s3_server):
    """``jobs/run_all.py`` with the head as the only node (the reference), then with a second node joined and every
    stage's actors placed on it: the actors ran there, the outputs equal the reference's row for row, no listener
    of either node is beyond 127.0.0.1 while the jobs run, and nothing a stage wrote is on the second node's disk."""
    env = {"DEMO_BASE_URL": site.base_url}
    sets = [*SETS, f"scrape.feeds=[{{name: demo, adapter: demo, base_url: '{site.base_url}', hashtags: [selfie]}}]"]
    t0 = time.monotonic()
    if len(cluster.alive()) == 1:  # first in the module: the head alone
        one_uri = s3_server("two-nodes-one")
        sid = _submit(client, "run_all", one_uri, sets, env)
        assert _wait(client, sid, 420) == "SUCCEEDED", client.get_job_logs(sid)[-4000:]
        one = _nodes_of(cluster, client, sid)
        assert all(v == {cluster.head_node_id()} for v in one.values()), one
    else:
        pytest.fail("the one-node reference needs the head alone: run this test first in the module")
    t1 = time.monotonic()
    node = cluster.worker()
    t2 = time.monotonic()
    two_uri = s3_server("two-nodes-two")
    sid = _submit(client, "run_all", two_uri, sets + ON_WORKER, env)
    bad: list[str] = []
    checks = [0]

    def listeners():
        if checks[0] < 5 and _status(client, sid) == "RUNNING":
            checks[0] += 1
            bad.extend(_listeners_beyond_loopback(cluster.pids()))

    assert _wait(client, sid, 420, every=listeners) == "SUCCEEDED", client.get_job_logs(sid)[-4000:]
    t3 = time.monotonic()
    print(f"one node {t1 - t0:.1f}s, worker joins {t2 - t1:.1f}s, two nodes {t3 - t2:.1f}s")
    assert checks[0] > 0 and not bad, bad
    two = _nodes_of(cluster, client, sid)
    assert all(v == {node.node_id} for v in two.values()), two
    one_root, two_root = DataRoot(one_uri), DataRoot(two_uri)
    for ds, cols in COMPARE.items():
        a, b = _rows(one_root, ds, cols), _rows(two_root, ds, cols)
        assert a and a == b, ds
    assert not _left_on_disk(node)


def _wait_until(pred, timeout_s: float, what: str, client=None, sid: str | None = None):
    """Poll ``pred`` (bounded); with a job, also fail at once when it ended."""
    deadline = time.monotonic() + timeout_s
    while not (v := pred()):
        if sid and _status(client, sid) not in ("PENDING", "RUNNING"):
            pytest.fail(f"job {sid} ended before {what}:\n{client.get_job_logs(sid)[-3000:]}")
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(0.1)
    return v


def _lost_node(cluster: Cluster, client, sid: str, node: RayNode, hold_s: float) -> dict:
    """Kill ``node`` (SIGKILL, all its processes), watch the job ``hold_s`` with no node that offers the placement,
    then join a replacement (what an autoscaler does); returns what was seen."""
    t_kill = time.monotonic()
    assert node.kill() > 0
    _wait_until(lambda: node.node_id not in cluster.alive(), 60, "the GCS to mark the node dead")
    dead_after = time.monotonic() - t_kill
    time.sleep(max(0.0, hold_s - dead_after))
    held = _status(client, sid)
    new = cluster.worker()
    return {"dead_after_s": round(dead_after, 1), "status_while_none": held, "replacement": new}


FACES_KILL_SETS = [
    "faces.num_actors=1",
    "faces.batch_size=2",
    "faces.part_rows=2",
    "faces.max_side=320",
    f"ray.placement.faces.labels={ON_WORKER_LABEL}",
]


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_second_node_lost_mid_faces_then_rerun(cluster: Cluster, client, s3_server):
    """The face actor's only matching node is killed after the first part file. Ray keeps the job waiting for a
    node with the label (the actor restarts there); a replacement node joins and the job either carries on (Ray
    Data retries the lost batches) or fails with one line; a rerun with ``ray job submit`` then ends with every
    image in ``faces`` exactly once. Then the node is lost with no replacement: the job fails with one line after
    ``node_wait_s``, and after a node joins a rerun ends with every image once."""
    from helpers.jobs import submit_cli
    from helpers.score_model import add_posts, face_images

    node = cluster.worker()
    uri = s3_server("two-nodes-kill-faces")
    root = DataRoot(uri)
    shas = add_posts(root, face_images(12))
    t0 = time.monotonic()
    sid = _submit(client, "faces", uri, FACES_KILL_SETS)
    _wait_until(lambda: root.part_files("faces"), 150, "the first faces part", client, sid)
    done_at_kill = root.read("faces").num_rows
    seen = _lost_node(cluster, client, sid, node, hold_s=6)
    status = _wait(client, sid, 180)
    logs = client.get_job_logs(sid)
    t1 = time.monotonic()
    print(f"faces: {done_at_kill}/{len(shas)} rows at the kill; {seen}; then {status} after {t1 - t0:.1f}s")
    assert done_at_kill < len(shas)  # killed mid-stage
    assert seen["status_while_none"] == "RUNNING"  # Ray waits for a node that offers the label
    if status == "FAILED":
        assert "stage faces: failed" in logs, logs[-3000:]
    else:
        assert status == "SUCCEEDED", logs[-3000:]
        assert _nodes_of(cluster, client, sid)["faces"] <= {node.node_id, seen["replacement"].node_id}
    _, proc = submit_cli(cluster.head, _entry_list("faces", uri, FACES_KILL_SETS))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"faces rerun: {time.monotonic() - t1:.1f}s")
    assert _keys(root, "faces") == sorted(shas)  # every image exactly once
    assert not _left_on_disk(seen["replacement"])

    # The node is lost again and this time none replaces it: the stage's node watch (pipeline.placement.NodeWatch)
    # ends the job after node_wait_s with one line, where Ray Data alone would wait for ever; a node joins, and a
    # rerun ends with every image exactly once.
    lost_uri = s3_server("two-nodes-lost-for-good")
    lost_root = DataRoot(lost_uri)
    lost_shas = add_posts(lost_root, face_images(12))
    lost_sets = [*FACES_KILL_SETS, "ray.placement.faces.node_wait_s=10"]
    sid = _submit(client, "faces", lost_uri, lost_sets)
    _wait_until(lambda: lost_root.part_files("faces"), 150, "the first faces part", client, sid)
    done_at_kill = lost_root.read("faces").num_rows
    t_kill = time.monotonic()
    assert seen["replacement"].kill() > 0
    status = _wait(client, sid, 120)
    logs = client.get_job_logs(sid)
    print(f"faces, node lost for good: {done_at_kill}/{len(lost_shas)} rows at the kill; {status} after"
          f" {time.monotonic() - t_kill:.1f}s")  # fmt: skip
    assert done_at_kill < len(lost_shas) and status == "FAILED", logs[-3000:]
    _assert_one_lost_line(logs, "faces", "labels {'facerank-node': 'worker'}")
    back = cluster.worker()
    _, proc = submit_cli(cluster.head, _entry_list("faces", lost_uri, lost_sets))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _keys(lost_root, "faces") == sorted(lost_shas)  # every image exactly once
    assert not _left_on_disk(back)

    # A stage whose placement no alive node offers waits ray.placement.<stage>.node_wait_s, then fails with one line
    # (exit 2) instead of waiting forever as Ray would (pipeline.placement.require_node).
    none_uri = s3_server("two-nodes-no-node")
    add_posts(DataRoot(none_uri), face_images(1))
    sets = [*FACES_KILL_SETS, "ray.placement.faces.labels={facerank-node: gone}", "ray.placement.faces.node_wait_s=3"]
    t2 = time.monotonic()
    _, proc = submit_cli(cluster.head, _entry_list("faces", none_uri, sets))
    print(f"faces with no node for its placement: exit {proc.returncode} after {time.monotonic() - t2:.1f}s")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if "no alive node offers ray.placement.faces" in ln]
    assert lines and "(labels {'facerank-node': 'gone'}) after 3s; alive nodes: " in lines[0], out[-3000:]
    assert "config error: stage faces: no alive node" in out


def _assert_one_lost_line(logs: str, stage: str, placement: str) -> None:
    """The job's log holds exactly one error line, the node watch's (pipeline.placement.NodeWatch, node_wait_s 10)."""
    lines = [ln for ln in logs.splitlines() if ln.startswith(f"error: stage {stage}: ")]
    assert len(lines) == 1, logs[-3000:]
    assert lines[0].startswith(
        f"error: stage {stage}: the nodes that offered ray.placement.{stage} ({placement}) left mid-stage and none"
        " joined within 10s; alive nodes: "
    ), lines


def _entry_list(job: str, uri: str, sets: list[str]) -> list[str]:
    return shlex.split(_entry(job, uri, sets))


TRAIN_RUN = "two-nodes-kill"
TRAIN_KILL_SETS = [
    "train.backbone=small_cnn",
    "train.image_size=32",
    "train.epochs=8",
    "train.batch_size=16",
    "train.num_workers=1",
    "train.cpus_per_worker=1",
    "train.max_failures=2",
    f"train.run_id={TRAIN_RUN}",
    f"ray.placement.train.resources={ON_WORKER_RESOURCE}",
]


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_second_node_lost_mid_training_then_rerun(cluster: Cluster, client, s3_server):
    """The Train worker's only matching node is killed once Ray Train's controller has registered a checkpoint (its
    snapshot on the bucket names one: :func:`_checkpoint_registered`). Ray Train
    (``FailureConfig(max_failures=2)``) restarts the worker group once a node with ``worker_node`` is back (a
    replacement joins), from the last checkpoint on the data root, or the job fails with one line; a rerun with
    the same run id then ends with every epoch in the model's history exactly once. Then the node is lost with no
    replacement: the job fails with one line after ``node_wait_s``; after a node joins, ``--resume`` finishes it."""
    from helpers.jobs import submit_cli
    from helpers.train import make_root

    node = cluster.worker()
    uri = s3_server("two-nodes-kill-train")
    root, _, _ = make_root(uri, n=60)

    t0 = time.monotonic()
    sid = _submit(client, "train", uri, TRAIN_KILL_SETS)
    _wait_until(lambda: _checkpoint_registered(root), 240, "a registered checkpoint", client, sid)
    trained_at_kill = not root.exists("models", TRAIN_RUN, "model.pt")
    seen = _lost_node(cluster, client, sid, node, hold_s=6)
    status = _wait(client, sid, 240)
    logs = client.get_job_logs(sid)
    t1 = time.monotonic()
    print(f"train: {seen}; then {status} after {t1 - t0:.1f}s")
    print("\n".join(ln for ln in logs.splitlines() if "Dataset" not in ln and "Checkpoint successfully" not in ln))
    assert trained_at_kill  # killed mid-training
    if status == "FAILED":
        assert "stage train: failed" in logs, logs[-3000:]
        _, proc = submit_cli(cluster.head, [*_entry_list("train", uri, TRAIN_KILL_SETS), "--resume"])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        print(f"train rerun: {time.monotonic() - t1:.1f}s")
    else:
        assert status == "SUCCEEDED", logs[-3000:]
        assert seen["replacement"].node_id in _nodes_of(cluster, client, sid)["train"]
    _assert_every_epoch_once(root)
    assert not _left_on_disk(seen["replacement"])

    # Lost again with no replacement: Ray Train would ask for the worker group again for ever (its controller's
    # worker-group start timeouts count against controller_failure_limit, -1 by default); the stage's node watch
    # ends the job after node_wait_s with one line, and after a node joins a --resume rerun finishes the run.
    lost_uri = s3_server("two-nodes-lost-train")
    lost_root, _, _ = make_root(lost_uri, n=60)
    lost_sets = [*TRAIN_KILL_SETS, "ray.placement.train.node_wait_s=10"]
    sid = _submit(client, "train", lost_uri, lost_sets)
    _wait_until(lambda: _checkpoint_registered(lost_root), 240, "a registered checkpoint", client, sid)
    t_kill = time.monotonic()
    assert seen["replacement"].kill() > 0
    status = _wait(client, sid, 150)
    logs = client.get_job_logs(sid)
    print(f"train, node lost for good: {status} after {time.monotonic() - t_kill:.1f}s")
    assert status == "FAILED" and not lost_root.exists("models", TRAIN_RUN, "model.pt"), logs[-3000:]
    _assert_one_lost_line(logs, "train", "resources {'worker_node': 0.01}")
    back = cluster.worker()
    _, proc = submit_cli(cluster.head, [*_entry_list("train", lost_uri, lost_sets), "--resume"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_every_epoch_once(lost_root)
    assert not _left_on_disk(back)


def _checkpoint_registered(root: DataRoot) -> bool:
    """Whether Ray Train's controller has registered a checkpoint of the run: the snapshot it writes beside the
    checkpoints names a latest one. A worker's "Reporting training result N" log line is not enough: the worker logs
    it before it queues the report, the controller takes reports from that queue only when it polls, and a worker
    group restarted before the controller has registered a checkpoint starts again at epoch 0."""
    path = f"{root.model_dir(TRAIN_RUN)}/checkpoints/checkpoint_manager_snapshot.json"
    if root.fs.get_file_info(path).type.name != "File":
        return False
    try:
        return root.read_json(path).get("latest_checkpoint_result") is not None
    except (OSError, ValueError):  # replaced while read
        return False


def _assert_every_epoch_once(root: DataRoot) -> None:
    m = root.read_json(f"{root.model_dir(TRAIN_RUN)}/metrics.json")
    epochs = [h["epoch"] for h in m["history"]]
    starts = [h["start_epoch"] for h in m["history"]]
    assert epochs == list(range(8)), epochs  # every epoch once, in order
    assert starts[0] == 0 and starts[-1] >= 1, starts  # resumed from a checkpoint on the bucket


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_scheduler_scores_twice_on_the_second_node(cluster: Cluster, client, s3_server, tmp_path):
    """The scheduler (``python -m pipeline scheduler``) against this cluster: two score runs with the scoring actors
    on the second node; the second run scores only the images added after the first."""
    from helpers.score_model import add_posts, face_images, write_model

    node = cluster.worker()
    uri = s3_server("two-nodes-scheduler")
    root = DataRoot(uri)
    write_model(root)
    first = add_posts(root, face_images(2))
    cfg_file = tmp_path / "score.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "data_root": uri,
                "faces": {"num_actors": 1, "batch_size": 4, "max_side": 320},
                "score": {"num_actors": 1, "batch_size": 4, "min_gap_s": 4, "ray_address": cluster.head.dashboard_url},
                "ray": {"placement": {"score": {"resources": {"worker_node": 0.01}}}},
            }
        )
    )

    def ours():
        return score_jobs(client, uri)

    def ended(j):
        return str(getattr(j.status, "value", j.status)) not in ("PENDING", "RUNNING")

    second: list[str] = []
    log = tmp_path / "scheduler.log"
    with running_scheduler(cfg_file, cluster.head.token, log, interval_s=2, max_seconds=300) as sched:
        j1 = _wait_until(lambda: next((j for j in ours() if ended(j)), None), 240, "the first score run")
        assert str(j1.status.value) == "SUCCEEDED", client.get_job_logs(j1.submission_id)[-3000:]
        second = add_posts(root, face_images(4)[2:], start=50)  # new images arrive between the runs
        j2 = _wait_until(lambda: next((j for j in ours()[1:] if ended(j)), None), 240, "the second score run")
        assert str(j2.status.value) == "SUCCEEDED", client.get_job_logs(j2.submission_id)[-3000:]
        assert sched.wait(60) == 0
    jobs = ours()
    assert len(jobs) == 2
    for j in jobs:
        assert _nodes_of(cluster, client, j.submission_id)["score"] == {node.node_id}
    assert log.read_text().count("submitted facerank-score-") == 2
    df = root.read("scores").to_pandas()
    assert df.image_sha256.is_unique and sorted(df.image_sha256) == sorted(first + second)
    runs = df.sort_values("scored_at").groupby("run_id", sort=False).image_sha256.apply(sorted).tolist()
    assert runs == [sorted(first), sorted(second)]  # the second run scored only the new images
    assert (df.status == "ok").all()


# ------------------------------------------------------------------------------------------------ fast
def test_require_node_waits_bounded_then_one_line():
    """pipeline.placement.require_node: returns when a node offers the placement, else fails after node_wait_s."""
    from pipeline.config import Placement
    from pipeline.placement import PlacementError, offers, require_node

    head = {"NodeID": "aaaa0000", "Alive": True, "Resources": {"CPU": 2.0}, "Labels": {"ray.io/node-id": "a"}}
    worker = {"NodeID": "bbbb1111", "Alive": True, "Resources": {"CPU": 2.0, "worker_node": 1.0}, "Labels": LABEL}
    by_label, by_res = Placement(labels=LABEL), Placement(resources={"worker_node": 0.01})
    assert offers(by_label, worker) and offers(by_res, worker) and not offers(by_label, head)
    assert not offers(by_res, {**worker, "Alive": False})
    assert offers(Placement(labels={"facerank-node": "!gpu"}), worker)
    assert offers(Placement(labels={"facerank-node": "in(cpu, worker)"}), worker)
    assert not offers(Placement(labels={"facerank-node": "!in(worker)"}), worker)
    assert offers(Placement(labels=LABEL, soft=True), head)  # soft labels: any node
    require_node("faces", Placement(), nodes=lambda: [])  # no placement: no wait, no question
    require_node("faces", by_label, nodes=lambda: [head, worker])

    now = [0.0]
    arrivals = [[head], [head], [head, worker]]  # a node that offers it joins on the third look
    require_node("faces", by_label, nodes=lambda: arrivals.pop(0), clock=lambda: now[0], sleep=lambda s: None)
    assert not arrivals

    def sleep(s):
        now[0] += s

    p = Placement(labels=LABEL, node_wait_s=30)
    with pytest.raises(PlacementError) as err:
        require_node("faces", p, nodes=lambda: [head, {**worker, "Alive": False}], clock=lambda: now[0], sleep=sleep)
    msg = str(err.value)
    assert "\n" not in msg and now[0] >= 30
    assert msg.startswith("stage faces: no alive node offers ray.placement.faces (labels {'facerank-node': 'worker'})")
    assert "after 30s; alive nodes: aaaa0000 ['CPU'] {}" in msg
