"""The session's one whole-pipeline run: ``jobs/run_all.py`` submitted with ``ray job submit --working-dir .`` to a
token-authenticated Ray head on 127.0.0.1, on the session's demo sites (feeds and staff directories).

Two modules read it: tests/test_end_to_end.py checks the rows and values of every output, and tests/test_faults.py
uses it as the yardstick of every killed-and-rerun stage (copies of its datasets are each killed stage's inputs).
Running it once per session instead of once per module keeps the suite inside its time budget; each module still
passes alone (the fixtures start what they need). Tests must not change its data root: copy what they modify
(:func:`helpers.datasets.copy_datasets`, ``shutil.copytree``).

Example (conftest.py registers both fixtures)::

    def test_posts(full_run):
        assert DataRoot(str(full_run.root)).read("posts").num_rows > 0
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from helpers.jobs import submit_cli
from pipeline.testing import RayHead

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "test.yaml"
RUN_ID = "fault-selfie"  # the model's run id: the killed score run of test_faults scores with it
# Overrides of configs/test.yaml for every job of the run and of the killed stages in tests/test_faults.py.
SETS = [
    "ray.num_cpus=2",
    "scrape.batch_rows=60",  # several part files per dataset, so a kill can land between them
    "faces.part_rows=40",
    "faces.max_side=320",
    "score.part_rows=40",
    "scrape.selenium.wait_timeout_s=30",  # a loaded CI machine renders slowly; a failed page would only come back
    "scrape.selenium.page_load_timeout_s=60",  # on the next run, and each killed run is compared with this one
]
JOB_TIMEOUT_S = 480


@dataclass(frozen=True)
class FullRun:
    """The finished run: its data root, the model's run id, the overrides it ran with and the job's log."""

    root: Path
    run_id: str
    sets: tuple[str, ...]
    log: str

    def overrides(self) -> dict[str, object]:
        """The run's ``--set`` values as ``load_config(overrides=...)`` takes them, the data root included."""
        import yaml

        out: dict[str, object] = {"data_root": str(self.root), "train.run_id": self.run_id}
        for s in self.sets:
            key, _, value = s.partition("=")
            out[key] = yaml.safe_load(value)
        return out


def demo_env(demo_site) -> dict[str, str]:
    """What a job needs to reach the demo sites (the config reads ``DEMO_BASE_URL``)."""
    return {"DEMO_BASE_URL": demo_site.base_url, "DEMO_N_POSTS": "240"}


def run_full_pipeline(head: RayHead, demo_site, base: Path) -> FullRun:
    """Submit ``jobs/run_all.py`` to ``head`` on a fresh data root under ``base``; fail loudly unless it succeeds
    and every dataset it should write has rows."""
    from pipeline.store import DataRoot

    root = base / "data"
    entry = ["python", "jobs/run_all.py", "--config", "configs/test.yaml", "--data-root", str(root)]
    entry += [a for s in [*SETS, f"train.run_id={RUN_ID}"] for a in ("--set", s)]
    os.environ.update(demo_env(demo_site))  # in-process reruns of the same config see the same sites
    _, proc = submit_cli(head, entry, runtime_env={"env_vars": demo_env(demo_site)}, timeout_s=JOB_TIMEOUT_S)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    dr = DataRoot(str(root))
    counts = {ds: dr.read(ds).num_rows for ds in ("posts", "staff", "faces", "labels/selfie", "scores")}
    assert all(n > 0 for n in counts.values()), counts
    assert dr.exists("models", RUN_ID, "model.json")
    return FullRun(root, RUN_ID, tuple(SETS), log)
