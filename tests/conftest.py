"""Shared fixtures: one Ray instance per test session, a temp data root, the demo sites on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
HAVE_CHROMIUM = Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()
_HEAD: dict = {}  # "stack": the ExitStack that stops the session's separate Ray head (fixture cluster_head)

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray Train's controller polls its workers every 2 s (Ray's default); the tests' epochs take well under that, so
# each epoch's report waited for the next poll. 0.5 s: about 3.5 s less per training run (measured), in this
# session's Ray and in every job or head the tests start (they inherit this environment).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# The opt-out HMAC key of every test (forget, scrape): never a key file in the real ~/.config (tests/test_privacy_full
# unsets it where it tests the key file).
os.environ.setdefault("FACERANK_OPTOUT_KEY", "facerank-tests-only-not-a-secret-0123456789")


RAY_FIXTURES = ("ray_session", "cluster_head")


def pytest_itemcollected(item):
    """Mark ``ray`` every test that uses a Ray session (the fixtures below) or a cluster, as it is collected (before
    ``-m`` deselects): ``make test-fast`` (``-m "not slow and not ray"``) leaves them out, and there
    :func:`_no_ray_outside_the_marker` fails a test that starts Ray in this process all the same."""
    if any(f in getattr(item, "fixturenames", ()) for f in RAY_FIXTURES) or item.get_closest_marker("cluster"):
        item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True, scope="session")
def _no_ray_outside_the_marker(request):
    """With ``-m`` leaving the ``ray`` tests out, starting Ray in this process is an error that names the fix."""
    if "not ray" not in (request.config.getoption("markexpr") or ""):
        yield
        return
    import ray

    real = ray.init

    def refuse(*args, **kwargs):
        raise RuntimeError("this test starts Ray but is not marked `ray`: use the ray_session fixture")

    ray.init = refuse
    yield
    ray.init = real


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs /usr/bin/chromium and /usr/bin/chromedriver (make test installs them)")
    for item in items:
        if "chromium" in item.keywords and not HAVE_CHROMIUM:
            item.add_marker(skip)
    # The tests on the session's separate Ray head run one after another, where the first of them was collected,
    # so that the head can stop after the last of them (pytest_runtest_teardown) instead of idling to the end.
    users = [item for item in items if _uses_head(item)]
    if users:
        first = items.index(users[0])
        items[:] = items[:first] + users + [item for item in items[first:] if not _uses_head(item)]


def _uses_head(item) -> bool:
    return "cluster_head" in getattr(item, "fixturenames", ())


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the session's separate Ray head once no test left in the session needs it: idle, it still keeps about
    4% of this 2-core machine busy (its GCS, raylet and dashboard processes; measured with /proc/stat)."""
    if not _HEAD.get("stack") or not _uses_head(item):
        return
    items = item.session.items
    if not any(_uses_head(later) for later in items[items.index(item) + 1 :]):
        _HEAD.pop("stack").close()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (ray.init is slow): token auth, 127.0.0.1 only, as the library starts it."""
    import ray

    from pipeline.runtime import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture
def data_root(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def demo_site():
    """The bundled demo sites on 127.0.0.1 (a free port), small: shared by the whole session."""
    from pipeline.demo.server import DemoServer

    with DemoServer(host="127.0.0.1", port=0, n_posts=240, staff_per_department=12) as srv:
        yield srv


@pytest.fixture
def demo_config(data_root, demo_site):
    """configs/test.yaml pointed at the session's demo site and a fresh data root."""
    os.environ["DEMO_BASE_URL"] = demo_site.base_url
    return load_config(REPO / "configs" / "test.yaml", overrides={"data_root": str(data_root)})


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    d = SHARED / "faces"
    if not (d / "MANIFEST.csv").exists():
        pytest.skip("../shared/faces is not beside this checkout")
    return d


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode) on 127.0.0.1; yields a function bucket → data root URI."""
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def make_root(bucket: str, prefix: str = "root") -> str:
        client.create_bucket(Bucket=bucket)
        return f"s3://{bucket}/{prefix}?endpoint_override={host}:{port}&scheme=http&region=us-east-1"

    make_root.endpoint = endpoint
    yield make_root
    server.stop()


@pytest.fixture(scope="session")
def cluster_head():
    """A separate Ray head for the session (2 CPUs, token auth, 127.0.0.1): the whole-pipeline run and the killed
    jobs of tests/test_faults.py run on it, as jobs on a cluster do."""
    from pipeline.testing import ray_head

    stack = _HEAD["stack"] = contextlib.ExitStack()  # closed early by pytest_runtest_teardown, or here
    with stack:
        yield stack.enter_context(ray_head(num_cpus=2))
    _HEAD.pop("stack", None)


@pytest.fixture(scope="session")
def full_run(cluster_head, demo_site, tmp_path_factory):
    """The session's one whole-pipeline run (tests/helpers/full_run.py): a :class:`helpers.full_run.FullRun`."""
    if not HAVE_CHROMIUM:
        pytest.skip("the whole-pipeline run crawls the staff directories with chromium (make test installs it)")
    from helpers.full_run import run_full_pipeline

    return run_full_pipeline(cluster_head, demo_site, tmp_path_factory.mktemp("full-run"))
