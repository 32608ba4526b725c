"""Jobs submitted for real to a separate, token-authenticated Ray head on 127.0.0.1, with local and S3 data roots.

The head is the session's (conftest ``cluster_head``, :func:`pipeline.testing.ray_head`: its own ``--temp-dir``,
free ports, always stopped). Jobs go through ``ray job submit --working-dir .`` (the CLI, authenticated by
``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``) and through ``JobSubmissionClient`` (the token as an
``Authorization`` header). The S3 data root is moto's S3 server on 127.0.0.1 (conftest ``s3_server``); its
credentials reach the job through ``env_vars``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers.datasets import populate_label_inputs
from helpers.jobs import submit_cli, wait_for, working_dir_copies
from pipeline.store import DataRoot
from pipeline.testing import RayHead, ray_executable

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LABEL_ARGS = ["--config", "configs/test.yaml", "--set", "labels.selfie.group_size=4", "--set", "labels.report=false"]
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="module")
def head(cluster_head) -> RayHead:
    """The session's separate Ray head (conftest ``cluster_head``: 2 CPUs, token auth, 127.0.0.1). Its other jobs
    (the whole-pipeline run, the killed jobs) are told apart by submission id: each test checks only its own."""
    return cluster_head


@pytest.fixture
def client(head: RayHead):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.dashboard_url, headers=head.headers)


@pytest.fixture(scope="module")
def early_jobs(head: RayHead, s3_server, tmp_path_factory) -> dict[str, tuple[str, object]]:
    """The cheap SDK jobs, submitted together at the start so that they run side by side (drivers need no CPU)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.dashboard_url, headers=head.headers)
    wd = {"working_dir": str(REPO)}
    s3_uri = s3_server("cluster-labels")
    s3_root = populate_label_inputs(s3_uri)
    empty = tmp_path_factory.mktemp("empty")
    s3_env = {k: os.environ[k] for k in S3_ENV}
    labels = ["python", "jobs/labels.py"]
    jobs = {
        "labels_s3": (labels + [*LABEL_ARGS, "--data-root", s3_uri], {**wd, "env_vars": s3_env}, s3_root),
        "missing_input": (labels + ["--config", "configs/test.yaml", "--data-root", str(empty)], wd, None),
        "bad_config": (labels + ["--config", "configs/no-such.yaml"], wd, None),
        "probe": (["python", "-c", PROBE], wd, None),
    }
    return {
        name: (client.submit_job(entrypoint=shlex.join(argv), runtime_env=env), extra)
        for name, (argv, env, extra) in jobs.items()
    }


def test_job_api_requires_the_token(head: RayHead, early_jobs):
    url = f"{head.dashboard_url}/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url, timeout=10)
    assert missing.value.code == 401
    bad = urllib.request.Request(url, headers={"Authorization": "Bearer not-the-token"})
    with pytest.raises(urllib.error.HTTPError) as wrong:
        urllib.request.urlopen(bad, timeout=10)
    assert wrong.value.code == 403
    # Behind a proxy that keeps `Authorization` for its own login, Ray also reads X-Ray-Authorization.
    proxied = urllib.request.Request(url, headers={"X-Ray-Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(proxied, timeout=10) as resp:
        assert resp.status == 200
    env = dict(head.client_env, RAY_AUTH_TOKEN="not-the-token")
    proc = subprocess.run(
        [ray_executable(), "job", "list"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode != 0
    ok = subprocess.run([ray_executable(), "job", "list"], env=head.client_env, capture_output=True, text=True,
                        timeout=60, cwd=REPO)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_cli_submit_labels_job(head: RayHead, client, tmp_path):
    root = populate_label_inputs(str(tmp_path / "data"))
    sid, proc = submit_cli(head, ["python", "jobs/labels.py", *LABEL_ARGS, "--data-root", root.uri])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert client.get_job_status(sid).value == "SUCCEEDED"
    logs = client.get_job_logs(sid)
    assert "stage labels: start" in logs and "stage labels: done" in logs
    summary = json.loads(next(line for line in logs.splitlines() if line.startswith('{"labels"')))
    assert summary["labels"]["selfie"]["ok"] == 16 and summary["labels"]["department"]["ok"] == 12
    selfie = root.read("labels/selfie").to_pylist()
    assert len(selfie) == 16 and {r["label"] for r in selfie} == {0, 1}
    assert sorted(r["department"] for r in root.read("labels/department").to_pylist()) == sorted(
        ["cs", "econ", "german", "mech"] * 3
    )
    # The uploaded working dir: the code and configs, never .venv, .git or data; small.
    copies = working_dir_copies(head)
    assert copies
    pkg = copies[-1]
    assert (pkg / "jobs" / "run_all.py").is_file() and (pkg / "pipeline" / "store.py").is_file()
    assert not any((pkg / d).exists() for d in (".venv", ".git", "data"))
    size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
    assert size < 20 * 2**20, f"working dir upload is {size / 2**20:.1f} MiB"


def test_sdk_submit_labels_job_on_s3(client, early_jobs):
    job, root = early_jobs["labels_s3"]
    status = wait_for(client, job)
    assert status == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    assert root.read("labels/selfie").num_rows == 16
    assert root.read("labels/department").num_rows == 12
    assert not root.list_dir("labels", "selfie", "_tmp")  # nothing half-written left behind


def test_failed_jobs_end_failed_with_a_clear_reason(client, early_jobs):
    job, _ = early_jobs["missing_input"]
    assert wait_for(client, job, timeout_s=180) == "FAILED"
    assert "exit code 3" in (client.get_job_info(job).message or "")
    assert "run the 'scrape' stage first" in client.get_job_logs(job)
    bad, _ = early_jobs["bad_config"]
    assert wait_for(client, bad, timeout_s=180) == "FAILED"
    assert "exit code 2" in (client.get_job_info(bad).message or "")
    assert "config file not found" in client.get_job_logs(bad)


PROBE = """
import json, sys
sys.path.insert(0, ".")  # what jobs/*.py do with their own folder's parent
import ray, pipeline
ray.init()
@ray.remote
def where():
    import pipeline
    return pipeline.__file__
print("PROBE " + json.dumps({"cwd": __import__("os").getcwd(), "driver": pipeline.__file__,
                             "worker": ray.get(where.remote())}))
"""


def test_driver_and_workers_import_the_uploaded_code_not_an_install(head: RayHead, client, early_jobs):
    job, _ = early_jobs["probe"]
    assert wait_for(client, job, timeout_s=180) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    line = next(x for x in client.get_job_logs(job).splitlines() if x.startswith("PROBE "))
    where = json.loads(line[len("PROBE ") :])
    pkg = Path(where["cwd"]).resolve()
    assert pkg.is_relative_to(Path(head.temp_dir).resolve()), where
    for key in ("driver", "worker"):
        assert Path(where[key]).resolve().is_relative_to(pkg), f"{key} imported {where[key]}, not the working dir"


def test_score_job_on_s3(head: RayHead, client, s3_server):
    from helpers.score_model import add_posts, face_images, write_model

    uri = s3_server("cluster-score")
    root = DataRoot(uri)
    shas = add_posts(root, face_images(3))
    run_id = "20250101T000000-s3"
    write_model(root, run_id=run_id)
    env_vars = {k: os.environ[k] for k in S3_ENV}
    args = ["--config", "configs/test.yaml", "--data-root", uri, "--set", f"score.model={run_id}"]
    job = client.submit_job(
        entrypoint=shlex.join(["python", "jobs/score.py", *args]),
        runtime_env={"working_dir": str(REPO), "env_vars": env_vars},
    )
    status = wait_for(client, job, timeout_s=300)
    assert status == "SUCCEEDED", client.get_job_logs(job)[-4000:]
    rows = root.read("scores").to_pylist()
    assert {r["image_sha256"] for r in rows} == set(shas)
    assert all(r["model_id"] == run_id for r in rows)
    assert all(r["status"] != "ok" or 0.0 <= r["score"] <= 1.0 for r in rows)


# The whole pipeline as one job through `ray job submit` (jobs/run_all.py, --working-dir ., env vars in the runtime
# env) is the reference run of tests/test_faults.py, whose killed-and-rerun stages are compared with its rows.


def doc_block(name: str) -> str:
    """The fenced block after ``<!-- test: name -->`` in docs/cluster.md."""
    text = (REPO / "docs" / "cluster.md").read_text()
    after = text.split(f"<!-- test: {name} -->", 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_docs_token_generation(tmp_path):
    """docs/cluster.md's first step, with HOME in a temp folder: the token lands in ~/.ray/auth_token."""
    cmd = doc_block("token").splitlines()[0].split("#")[0].split()
    assert cmd == ["ray", "get-auth-token", "--generate"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([ray_executable(), *cmd[1:]], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    token = (tmp_path / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32 and proc.stdout.strip() == token


def test_docs_sdk_snippet_submits_and_waits(head: RayHead, tmp_path, monkeypatch, capsys):
    root = populate_label_inputs(str(tmp_path / "data"))
    for k, v in head.client_env.items():
        if k.startswith("RAY_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("FACERANK_DATA_ROOT", root.uri)
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(doc_block("submit-sdk"), "docs/cluster.md:submit-sdk", "exec"), namespace)
    assert str(namespace["status"].value) == "SUCCEEDED", namespace["client"].get_job_logs(namespace["job_id"])[-3000:]
    assert "SUCCEEDED" in capsys.readouterr().out
    # configs/cluster.yaml: groups of 100 posts, so 16 posts give no selfie labels; departments do
    assert sorted(r["department"] for r in root.read("labels/department").to_pylist()) == sorted(
        ["cs", "econ", "german", "mech"] * 3
    )
