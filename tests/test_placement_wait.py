"""Every stage with placed work waits a bounded time for a node that offers its ``ray.placement``, then fails with
one line, before it starts any actor or worker (on the session's one-node Ray, no node has ``nowhere``); and a
stage whose placed nodes all leave mid-stage fails with one line once none has come back within ``node_wait_s``
(:class:`pipeline.placement.NodeWatch`; a node that "leaves" here is one that ``ray.nodes`` stops listing: the
real kill is tests/test_two_nodes.py's)."""

from __future__ import annotations

import signal
import time

import pytest

from helpers.train import cfg_for, make_root
from pipeline.config import Placement, load_config
from pipeline.placement import NodeLostError, NodeWatch, PlacementError, require_node

NOWHERE = {"resources": {"nowhere": 1.0}, "node_wait_s": 0}


def _cfg(tmp_path, stage: str):
    return load_config(None, overrides={"data_root": str(tmp_path), "ray": {"placement": {stage: NOWHERE}}})


def test_scrape_fails_before_starting_its_actors(ray_session, tmp_path):
    from pipeline.scrape.workers import RayWorkers

    with pytest.raises(PlacementError, match=r"^stage scrape: no alive node offers ray\.placement\.scrape \("):
        RayWorkers.start(_cfg(tmp_path, "scrape"), [], None)  # before the limiter or any crawl actor exists


def test_train_fails_before_ray_train_starts(ray_session, tmp_path):
    from pipeline.train import run

    root, _, _ = make_root(tmp_path, task="selfie", n=20)
    cfg = cfg_for(tmp_path)
    cfg = cfg.model_copy(update={"ray": _cfg(tmp_path, "train").ray})
    with pytest.raises(PlacementError, match=r"^stage train: no alive node offers ray\.placement\.train \("):
        run(cfg)
    assert not root.exists("models")


def test_score_and_its_face_detection_fail_on_their_own_placements(ray_session, tmp_path):
    from pipeline.faces.recipe import CropRecipe
    from pipeline.score.inference import detected_faces
    from pipeline.score.stage import build
    from pipeline.store import DataRoot

    root = DataRoot(str(tmp_path))
    with pytest.raises(PlacementError, match=r"^stage score: no alive node offers ray\.placement\.score \("):
        build(_cfg(tmp_path, "score"), root, None)
    with pytest.raises(PlacementError, match=r"^stage score: no alive node offers ray\.placement\.faces \("):
        cfg = _cfg(tmp_path, "faces")
        detected_faces(cfg, root, ["0" * 64], CropRecipe.of(cfg.faces, detect=True))


GPU_BOX = {"NodeID": "feed0000", "Alive": True, "Resources": {"CPU": 4.0, "gpu_box": 1.0}, "Labels": {}}


class Nodes:
    """``ray.nodes`` as a test wants it: the real ones, plus ``GPU_BOX`` while ``extra`` is true."""

    def __init__(self, real):
        self.real, self.extra = real, True

    def __call__(self):
        return self.real() + ([GPU_BOX] if self.extra else [])


def test_a_placement_lost_mid_stage_ends_a_ray_data_pipeline_with_one_line(ray_session):
    import ray

    nodes = Nodes(ray.nodes)
    p = Placement(resources={"gpu_box": 1.0}, node_wait_s=1.0)
    blocked = ray.data.range(4, override_num_blocks=4).map(lambda r: (time.sleep(60), r)[1])
    t0 = time.monotonic()
    with pytest.raises(NodeLostError) as err:
        with NodeWatch("faces", nodes=nodes, interval=0.1):
            require_node("faces", p, nodes=nodes)  # confirmed, so watched from here on
            nodes.extra = False  # the node leaves; the pipeline below would wait 60 s per row
            list(blocked.iter_batches())
    took = time.monotonic() - t0
    msg = str(err.value)
    assert 1.0 <= took < 20, took  # node_wait_s, then the interrupt, not the pipeline's minutes
    assert "\n" not in msg and msg.startswith(
        "stage faces: the nodes that offered ray.placement.faces (resources {'gpu_box': 1.0}) left mid-stage"
    )
    assert "none joined within 1s; alive nodes: " in msg and "gpu_box" not in msg.split("alive nodes:")[1]
    assert NodeWatch.current is None and signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def test_a_node_back_within_node_wait_s_lets_the_stage_finish_and_the_watch_ends_with_it(ray_session):
    import ray

    @ray.remote(num_cpus=0.1)
    def slow():
        time.sleep(2.5)
        return 7

    nodes = Nodes(ray.nodes)
    with NodeWatch("score", nodes=nodes, interval=0.1) as watch:
        require_node("score", Placement(resources={"gpu_box": 1.0}, node_wait_s=2.0), nodes=nodes)
        ref = slow.remote()
        nodes.extra = False
        time.sleep(1.0)  # gone for half of node_wait_s: a replacement joins
        nodes.extra = True
        assert ray.get(ref) == 7
    assert watch.error is None and watch.placements and NodeWatch.current is None
    nodes.extra = False
    time.sleep(2.5)  # past node_wait_s after the stage: nothing interrupts this process any more
    with NodeWatch("score", nodes=nodes, interval=0.1):
        require_node("score", Placement(), nodes=nodes)  # no placement: nothing watched
        assert not NodeWatch.current.placements


def test_faces_stage_whose_node_leaves_exits_1_with_one_line(ray_session, tmp_path, monkeypatch, capsys):
    """The faces stage through the CLI: its face actors ask for a resource only the departed node had, so Ray Data
    would keep them pending for ever; the stage exits 1 with one line after node_wait_s, writing nothing."""
    import ray

    from helpers.score_model import add_posts, face_images
    from pipeline import placement
    from pipeline.cli import main
    from pipeline.store import DataRoot

    root = DataRoot(str(tmp_path / "data"))
    add_posts(root, face_images(2))
    nodes = Nodes(ray.nodes)
    looks = []

    def leaving():  # the GPU box answers require_node's look, then is gone
        looks.append(1)
        if len(looks) > 1:
            nodes.extra = False
        return nodes()

    monkeypatch.setattr(placement, "cluster_nodes", leaving)  # not ray.nodes: Ray Data's own actors pickle it
    sets = ["ray.placement.faces.resources={gpu_box: 1}", "ray.placement.faces.node_wait_s=2", "faces.num_actors=1"]
    t0 = time.monotonic()
    code = main(["stage", "faces", "--config", "configs/test.yaml", "--data-root", root.uri]
                + [a for s in sets for a in ("--set", s)])  # fmt: skip
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 1 and took < 60, (code, took, err[-2000:])
    assert lines == [
        "error: stage faces: the nodes that offered ray.placement.faces (resources {'gpu_box': 1.0}) left mid-stage"
        f" and none joined within 2s; alive nodes: {lines[0].split('alive nodes: ')[1]}"
    ], err[-2000:]
    assert not root.exists("faces")  # nothing half-written; a rerun starts from scratch
