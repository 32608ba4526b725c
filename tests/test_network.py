"""Nothing leaves loopback: every Ray the project starts binds 127.0.0.1, needs the token, and probes no cloud metadata.

Sockets are sampled (``helpers.sockets.SocketWatch``, every 0.1 s) while a local Ray (``start_local_ray``, as
``init_ray`` and ``make demo`` start it), a test head (``pipeline.testing.ray_head``) and a one-stage job on that
head run. A test fails on any connection whose peer is neither loopback nor one of this machine's addresses (Ray's
dashboard sends its cloud-metadata probe to 169.254.169.254 unless ``~/ray_bootstrap_config.yaml`` exists), and on
any listener beyond loopback whose process runs without token auth. Both Rays must also refuse a client without the
token: a GCS connection (as a joining node or driver makes) and the job API.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers.datasets import populate_label_inputs
from helpers.http import serve
from helpers.jobs import wait_for
from helpers.sockets import SocketWatch, is_loopback, session_of, tree_of
from pipeline import ray_env
from pipeline.testing import ray_head

REPO = Path(__file__).resolve().parents[1]

LOCAL_RAY = textwrap.dedent(
    """
    import json, sys, time
    from pipeline.runtime import start_local_ray
    import ray
    start_local_ray(num_cpus=1, include_dashboard=True)
    node = ray._private.worker.global_worker.node
    print("ADDR " + json.dumps({"gcs": node.gcs_address, "dashboard": node.address_info["webui_url"]}), flush=True)
    assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    sys.stdin.readline()  # stay up until the test is done probing
    ray.shutdown()
    """
)

GCS_CLIENT = textwrap.dedent(
    """
    import sys
    from ray._raylet import GcsClient
    client = GcsClient(address=sys.argv[1])
    print("CONNECTED", client.internal_kv_get(b"x", None))
    """
)


def _without_ray_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra)
    return env


def assert_gcs_refuses_without_token(gcs_address: str) -> None:
    """A GCS client with no token, and one with a wrong token, are refused (not merely slow)."""
    for env in (
        _without_ray_env(RAY_AUTH_MODE="disabled"),
        _without_ray_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32),
    ):
        r = subprocess.run(
            [sys.executable, "-c", GCS_CLIENT, gcs_address], env=env, capture_output=True, text=True, timeout=120
        )
        assert r.returncode != 0 and "CONNECTED" not in r.stdout, r.stdout
        assert "InvalidAuthToken" in r.stderr or "Unauthenticated" in r.stderr, r.stderr[-2000:]


def assert_http_needs_token(url: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as no_token:
        urllib.request.urlopen(f"{url}/api/jobs/", timeout=10)
    assert no_token.value.code == 401
    req = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": "Bearer " + "0" * 32})
    with pytest.raises(urllib.error.HTTPError) as wrong:
        urllib.request.urlopen(req, timeout=10)
    assert wrong.value.code in (401, 403)


def test_secure_env_refuses_auth_off_and_writes_the_bootstrap_config(tmp_path):
    env = {"HOME": str(tmp_path)}
    ray_env.secure_env(env)
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    config = tmp_path / "ray_bootstrap_config.yaml"
    assert config.read_text().rstrip().endswith("{}")
    config.write_text("provider: {type: aws}\n")  # someone else's (Ray's launcher) is never overwritten
    ray_env.secure_env(env)
    assert config.read_text() == "provider: {type: aws}\n"
    with pytest.raises(ray_env.RayAuthError, match="token authentication"):
        ray_env.secure_env({"HOME": str(tmp_path), "RAY_AUTH_MODE": "disabled"})


@pytest.mark.slow
def test_local_ray_binds_loopback_needs_the_token_and_sends_nothing_out():
    import json

    proc = subprocess.Popen(
        [sys.executable, "-c", LOCAL_RAY],
        cwd=REPO,
        env=_without_ray_env(PYTHONPATH=str(REPO)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with SocketWatch(lambda: tree_of(proc.pid)) as watch:
            line = ""
            deadline = time.monotonic() + 120
            while not line.startswith("ADDR ") and time.monotonic() < deadline and proc.poll() is None:
                line = proc.stdout.readline()
            assert line.startswith("ADDR "), f"local Ray did not start (exit {proc.poll()})"
            addr = json.loads(line[5:])
            time.sleep(4)  # the dashboard's start-up (where the metadata probe ran) is over by now
            assert is_loopback(addr["gcs"].rsplit(":", 1)[0]), addr
            assert_gcs_refuses_without_token(addr["gcs"])
            assert_http_needs_token("http://" + addr["dashboard"])
        assert watch.samples > 20 and {"gcs_server", "raylet"} <= watch.processes_seen, watch.report()
        assert not watch.egress, watch.report()
        assert not watch.open_listeners, watch.report()
        beyond = [x for x in watch.listeners if not is_loopback(x[1])]
        assert not beyond, f"a single-node local Ray listens beyond loopback: {beyond}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_test_head_and_a_job_on_it_stay_on_loopback(tmp_path):
    from ray.job_submission import JobSubmissionClient

    data = str(tmp_path / "data")
    root = populate_label_inputs(data)
    with ray_head(num_cpus=2) as head:
        with SocketWatch(lambda: session_of(head.pid)) as watch:
            client = JobSubmissionClient(head.dashboard_url, headers=head.headers)
            job = client.submit_job(
                entrypoint=(
                    "python jobs/labels.py --config configs/test.yaml --data-root "
                    f"{data} --set labels.selfie.group_size=4 --set labels.report=false"
                ),
                runtime_env={"working_dir": str(REPO)},
            )
            assert wait_for(client, job, timeout_s=240) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
            assert_gcs_refuses_without_token(head.gcs_address)
            assert_http_needs_token(head.dashboard_url)
        assert root.read("labels/selfie").num_rows == 16
        assert watch.samples > 20 and {"gcs_server", "raylet"} <= watch.processes_seen, watch.report()
        assert not watch.egress, watch.report()
        assert not watch.open_listeners, watch.report()
        beyond = [x for x in watch.listeners if not is_loopback(x[1])]
        assert not beyond, f"the test head listens beyond loopback: {beyond}"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 1])
def test_training_listens_on_loopback_only(ray_session, tmp_path, workers):
    """Ray Train's torch process group rendezvous (a c10d TCPStore) listened on every interface; on one node
    (pipeline/process_group.py) two DDP workers meet through a FileStore with gloo on loopback, one worker starts no
    process group. Sampled during the run with no exemption: any listener of ours beyond loopback fails."""
    from helpers.train import cfg_for, make_root
    from pipeline.train import run

    make_root(tmp_path)
    cfg = cfg_for(tmp_path, run_id=f"20260101T000000Z-net{workers}", epochs=2, num_workers=workers,
                  cpus_per_worker=1 if workers == 1 else 0.5)  # fmt: skip
    with SocketWatch(lambda: tree_of(os.getpid()), interval_s=0.05) as watch:
        out = run(cfg)
    assert out["test"]["n"] == 20, out  # trained and tested (two workers: through their process group)
    assert watch.samples > 20 and any("Train" in name or "ray::" in name for name in watch.processes_seen), (
        watch.report()
    )
    beyond = sorted(x for x in watch.listeners if not is_loopback(x[1]))
    assert not beyond, f"training listens beyond loopback: {beyond}"
    assert not watch.egress, watch.report()


@pytest.mark.chromium
@pytest.mark.slow  # Chromium watched for 6 s
def test_a_browser_without_the_egress_proxy_reaches_loopback_only(tmp_path):
    """Chromium calls home by itself (update, accounts, search hosts): ``chrome_options`` keeps it on loopback."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from pipeline.scrape.staff.browser import chrome_options

    page = tmp_path / "index.html"
    page.write_text("<html><body><h1 id=t>local</h1><img src='http://example.com/x.png'></body></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    opts = chrome_options(
        "--window-size=800,600", f"--user-data-dir={tmp_path / 'profile'}", binary="/usr/bin/chromium"
    )
    with serve(handler) as server:
        driver = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
        try:
            driver_pid = driver.service.process.pid
            with SocketWatch(lambda: tree_of(driver_pid)) as watch:
                driver.get(f"{server.base}/index.html")
                assert driver.find_element("id", "t").text == "local"
                time.sleep(6)  # Chromium's own background requests start within seconds of launch
            assert watch.samples > 20 and any("chrom" in n for n in watch.processes_seen), watch.report()
            assert not watch.egress, watch.report()
        finally:
            driver.quit()
