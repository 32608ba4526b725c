"""Two Ray nodes for real, on one machine: jobs whose actors and Train workers run on the second node, an S3 data
root, and the second node killed mid-stage.

One cluster for the module: a token-authenticated head (:func:`pipeline.testing.ray_head`) and a worker node that
joins it (:func:`pipeline.testing.ray_worker_node`: custom resource ``worker_node``, label ``facerank-node=worker``,
its own ``--temp-dir``), every listener on 127.0.0.1. The data roots are buckets on moto's S3 server on 127.0.0.1
(conftest ``s3_server``), the only storage both nodes share. Jobs go through ``ray job submit`` / the job SDK with
``ray.placement.<stage>`` set (pipeline/placement.py). Inputs are built directly (tests/score_helpers.py face
images, tests/helpers/train.py crops and labels), not scraped, to stay inside the module's time budget.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from helpers.jobs import submit_cli, wait_for
from helpers.ray_head import head_fixture
from pipeline.store import DataRoot
from pipeline.testing import RayHead, RayNode, ray_worker_node
from pipeline.testing.head import _session_procs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
LABEL = {"facerank-node": "worker"}
PLACE_FACES = "ray.placement.faces.labels={facerank-node: worker}"
FACES_SETS = ["faces.num_actors=1", "faces.batch_size=2", "faces.part_rows=2", "faces.max_side=320"]
TRAIN_SETS = [
    "train.backbone=small_cnn", "train.image_size=32", "train.epochs=1", "train.batch_size=16",
    "train.num_workers=1", "train.cpus_per_worker=1", "train.max_failures=1", "train.run_id=two-nodes-selfie",
    "ray.placement.train.resources={worker_node: 0.01}",
]  # fmt: skip
# Files a stage writes to the data root; none may stay on a node's own disk (Ray's code upload excluded).
OUTPUT_FILE = re.compile(r"(\.(jpe?g|png|parquet|pt|pth|ckpt)$)|^(state\.pt|model\.json|checkpoint_.*)$")

head = head_fixture(num_cpus=2)


@pytest.fixture(scope="module")
def node(head: RayHead):
    """The second node: 2 CPUs, the only one with the ``worker_node`` resource and the ``facerank-node`` label."""
    with ray_worker_node(head, num_cpus=2, resources={"worker_node": 1}, labels=LABEL) as n:
        yield n


@pytest.fixture(scope="module")
def client(head: RayHead):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.dashboard_url, headers=head.headers)


def _entry(stage: str, uri: str, sets: list[str]) -> list[str]:
    args = ["python", f"jobs/{stage}.py", "--config", "configs/test.yaml", "--data-root", uri]
    return args + [a for s in sets for a in ("--set", s)]


def _runtime_env() -> dict:
    return {"working_dir": str(REPO), "env_vars": {k: os.environ[k] for k in S3_ENV} | {"RAY_DEDUP_LOGS": "0"}}


def _actors(head: RayHead, job_id: str) -> list[dict]:
    import json
    import urllib.request

    query = f"/api/v0/actors?detail=true&limit=1000&filter_keys=job_id&filter_predicates=%3D&filter_values={job_id}"
    req = urllib.request.Request(head.dashboard_url + query, headers=head.headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["data"]["result"]["result"]


def _nodes_of(head: RayHead, client, sid: str, class_part: str) -> set[str]:
    job_id = client.get_job_info(sid).job_id
    return {a["node_id"] for a in _actors(head, job_id) if class_part in a["class_name"]}


def _listeners_beyond_loopback(pids: set[int]) -> list[str]:
    """``ss -tulnp`` lines of ``pids`` whose local address is not 127.0.0.1."""
    out = subprocess.run(["ss", "-tulnpH"], capture_output=True, text=True, timeout=30).stdout
    bad = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        local = line.split()[4]
        if owners & pids and not (local.startswith("127.0.0.1:") or local.startswith("[::ffff:127.0.0.1]:")):
            bad.append(line)
    return bad


def _left_on_disk(n: RayNode) -> list[str]:
    """Stage outputs under the worker node's temp folder, outside Ray's unpacked code upload."""
    found = []
    for f in Path(n.temp_dir).rglob("*"):
        if f.is_file() and "runtime_resources" not in f.parts and OUTPUT_FILE.search(f.name):
            found.append(str(f))
    return found


def _expected_faces(images: list[bytes]) -> list[tuple]:
    """What the detector gives for these images in this process (no Ray): the one-node reference, row for row."""
    from pipeline.config import load_config
    from pipeline.faces.detector import FaceDetector

    cfg = load_config(REPO / "configs" / "test.yaml", overrides={"faces.max_side": 320})
    rows = FaceDetector(cfg.faces, num_threads=1).process(images)
    return [(r["n_faces"], r["kept"], r["reason"]) for r in rows]


def test_faces_and_train_jobs_run_on_the_second_node(head: RayHead, node: RayNode, client, s3_server):
    from score_helpers import add_posts, face_images

    from helpers.train import make_root

    faces_uri, train_uri = s3_server("two-nodes-faces"), s3_server("two-nodes-train")
    images = face_images(4)
    shas = add_posts(DataRoot(faces_uri), images)
    make_root(train_uri, n=40)
    t0 = time.monotonic()
    train = client.submit_job(entrypoint=shlex.join(_entry("train", train_uri, TRAIN_SETS)), runtime_env=_runtime_env())
    faces = client.submit_job(
        entrypoint=shlex.join(_entry("faces", faces_uri, [*FACES_SETS, PLACE_FACES])), runtime_env=_runtime_env()
    )
    # while both run: every listener of both nodes is on 127.0.0.1
    pids = {p.pid for p in _session_procs(head.pid) + node.processes()}
    assert not _listeners_beyond_loopback(pids)
    expected = dict(zip(shas, _expected_faces(images), strict=True))

    assert wait_for(client, faces, timeout_s=180) == "SUCCEEDED", client.get_job_logs(faces)[-4000:]
    assert wait_for(client, train, timeout_s=180) == "SUCCEEDED", client.get_job_logs(train)[-4000:]
    print(f"faces + train jobs side by side: {time.monotonic() - t0:.1f}s")
    for sid in (faces, train):
        info = client.get_job_info(sid)
        print(sid, (info.end_time - info.start_time) / 1000, client.get_job_logs(sid)[-2500:])

    # placed on the second node: the face actors by label, the Train workers by custom resource
    assert _nodes_of(head, client, faces, "FaceActor") == {node.node_id}
    assert _nodes_of(head, client, train, "RayTrainWorker") == {node.node_id}
    # the faces rows are the detector's for the same images, one per image
    got = DataRoot(faces_uri).read("faces").to_pylist()
    assert sorted(r["image_sha256"] for r in got) == sorted(shas)
    assert {r["image_sha256"]: (r["n_faces"], r["kept"], r["reason"]) for r in got} == expected
    assert all(r["kept"] and r["crop_jpeg"] for r in got)
    # the model folder and its checkpoint are on S3, nothing the stages wrote is on the worker node's disk
    troot = DataRoot(train_uri)
    assert troot.exists("models", "two-nodes-selfie", "model.pt")
    assert any(n.startswith("checkpoint") for n in troot.list_dir("models", "two-nodes-selfie", "checkpoints"))
    assert not _left_on_disk(node)


def _faces_keys(root: DataRoot) -> list[str]:
    return sorted(root.read("faces", columns=["image_sha256"]).column("image_sha256").to_pylist())


def test_worker_node_lost_mid_faces_then_rerun(head: RayHead, node: RayNode, client, s3_server):
    """The face actor prefers the second node (``soft`` label); that node is killed (raylet, object store, agents,
    workers) after the first part file. Ray Data restarts the actor on the head and retries the lost batches, or
    the job fails with its reason; a rerun submitted with ``ray job submit`` then ends with every image exactly
    once. Runs last: it kills the module's second node."""
    from score_helpers import add_posts, face_images

    uri = s3_server("two-nodes-kill-faces")
    root = DataRoot(uri)
    shas = add_posts(root, face_images(10))
    sets = [*FACES_SETS, PLACE_FACES, "ray.placement.faces.soft=true"]
    sid = client.submit_job(entrypoint=shlex.join(_entry("faces", uri, sets)), runtime_env=_runtime_env())
    deadline = time.monotonic() + 150
    while not root.part_files("faces"):
        status = str(client.get_job_status(sid).value)
        assert time.monotonic() < deadline and status in ("PENDING", "RUNNING"), client.get_job_logs(sid)[-3000:]
        time.sleep(0.1)
    assert _nodes_of(head, client, sid, "FaceActor") == {node.node_id}  # preferred, and free: the second node
    done_at_kill = root.read("faces").num_rows
    assert node.kill() > 0
    status = wait_for(client, sid, timeout_s=180)
    logs = client.get_job_logs(sid)
    print(f"faces after losing the worker node: {status}, {done_at_kill} of {len(shas)} rows written at the kill")
    if status == "FAILED":
        assert "stage faces: failed" in logs, logs[-3000:]
    else:
        assert status == "SUCCEEDED", logs[-3000:]
        # the state API lists an actor once, where it lives now: restarted on the head
        assert _nodes_of(head, client, sid, "FaceActor") == {_head_node_id(head, node)}
    t0 = time.monotonic()
    _, proc = submit_cli(head, _entry("faces", uri, sets), runtime_env={"env_vars": _runtime_env()["env_vars"]})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"faces rerun: {time.monotonic() - t0:.1f}s")
    assert done_at_kill < len(shas)  # killed mid-stage
    assert _faces_keys(root) == sorted(shas)  # every image exactly once
    assert not _left_on_disk(node)


def _head_node_id(head: RayHead, node: RayNode) -> str:
    from pipeline.testing.head import _node_ids

    return next(i for i in _node_ids(head) if i != node.node_id)
