"""Every stage with placed work waits a bounded time for a node that offers its ``ray.placement``, then fails with
one line, before it starts any actor or worker (on the session's one-node Ray, no node has ``nowhere``)."""

from __future__ import annotations

import pytest

from helpers.train import cfg_for, make_root
from pipeline.config import load_config
from pipeline.placement import PlacementError

NOWHERE = {"resources": {"nowhere": 1.0}, "node_wait_s": 0}


def _cfg(tmp_path, stage: str):
    return load_config(None, overrides={"data_root": str(tmp_path), "ray": {"placement": {stage: NOWHERE}}})


def test_scrape_fails_before_starting_its_actors(ray_session, tmp_path):
    from pipeline.scrape.workers import Workers

    with pytest.raises(PlacementError, match=r"^stage scrape: no alive node offers ray\.placement\.scrape \("):
        Workers.start(_cfg(tmp_path, "scrape"), [], None)  # before the limiter or any crawl actor exists


def test_train_fails_before_ray_train_starts(ray_session, tmp_path):
    from pipeline.train import run

    root, _, _ = make_root(tmp_path, task="selfie", n=20)
    cfg = cfg_for(tmp_path)
    cfg = cfg.model_copy(update={"ray": _cfg(tmp_path, "train").ray})
    with pytest.raises(PlacementError, match=r"^stage train: no alive node offers ray\.placement\.train \("):
        run(cfg)
    assert not root.exists("models")


def test_score_and_its_face_detection_fail_on_their_own_placements(ray_session, tmp_path):
    from pipeline.score.inference import detected_faces
    from pipeline.score.stage import build
    from pipeline.store import DataRoot

    root = DataRoot(str(tmp_path))
    with pytest.raises(PlacementError, match=r"^stage score: no alive node offers ray\.placement\.score \("):
        build(_cfg(tmp_path, "score"), root, None)
    with pytest.raises(PlacementError, match=r"^stage score: no alive node offers ray\.placement\.faces \("):
        detected_faces(_cfg(tmp_path, "faces"), root, ["0" * 64])
