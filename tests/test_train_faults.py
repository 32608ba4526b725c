"""The train stage when things go wrong or live elsewhere: a worker killed mid-epoch resumes from the last
checkpoint (``FailureConfig``), and a whole run on an ``s3://`` data root (moto server) with checkpoints in the
bucket."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers.train import cfg_for, make_root
from pipeline.store import DataRoot
from pipeline.train import LoadedModel, resolve_model_dir, run
from pipeline.train.loop import FAULT_ENV


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_killed_worker_resumes_from_last_checkpoint(ray_session, tmp_path, monkeypatch):
    data = tmp_path / "data"
    root, _, _ = make_root(data, n=40)
    marker = tmp_path / "killed"
    # rank 1 exits hard after its first batch of epoch 2; epochs 0 and 1 are checkpointed by then
    monkeypatch.setenv(FAULT_ENV, f"1:2:{marker}")
    out = run(cfg_for(data, run_id="20260101T000000Z-selfie", epochs=3, max_failures=1))
    assert marker.exists()  # the worker really died
    m = root.read_json(f"{out['model_dir']}/metrics.json")
    epochs = [h["epoch"] for h in m["history"]]
    starts = [h["start_epoch"] for h in m["history"]]
    assert epochs == [0, 1, 2]  # every epoch once, in order
    assert starts[0] == 0 and starts[-1] >= 1, starts  # the last epoch ran in a process resumed from a checkpoint
    assert m["test"]["n"] == 8
    model = LoadedModel.load(resolve_model_dir(root, "latest"), root)
    assert model.predict([Image.new("RGB", (64, 64), (180,) * 3)])[0].shape == (1,)


@pytest.mark.slow
def test_s3_data_root_checkpoints_and_export(ray_session, tmp_path, s3_server):
    # The session's Ray started before the fixture put the moto credentials in the environment, so its worker
    # processes lack them: the URI carries them (pyarrow reads user:password as the access key), and with them
    # the filesystem that Ray Data and Ray Train pickle to their workers.
    uri = s3_server("train-bucket").replace("s3://", "s3://testing:testing@")
    root, crops, _ = make_root(uri, n=40)
    out = run(cfg_for(uri, run_id="20260101T000000Z-selfie", epochs=1, num_workers=1, cpus_per_worker=1))
    assert out["model_dir"] == root.model_dir("20260101T000000Z-selfie") and not out["model_dir"].startswith("/")
    ckpts = root.list_dir("models", out["run_id"], "checkpoints")
    assert any(n.startswith("checkpoint_") for n in ckpts), ckpts  # Ray Train wrote into the bucket
    for name in ("model.json", "model.pt", "metrics.json", "test_scores.json", "plots/training_curve.png"):
        assert root.fs.get_file_info(f"{out['model_dir']}/{name}").size > 0, name

    fresh = DataRoot(uri)  # a new handle on the bucket, as the scorer would open it
    model = LoadedModel.load(resolve_model_dir(fresh, "latest"), fresh)
    scores, names = model.predict([Image.open(io.BytesIO(c)) for c in crops[:4]])
    assert scores.shape == (4,) and np.all((scores >= 0) & (scores <= 1)) and set(names) <= {"bad", "good"}
    assert not (tmp_path / "models").exists()
