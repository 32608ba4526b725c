"""The score stage on a tiny data root with a tiny exported model: rows, reuse of face rows, incremental reruns."""

from __future__ import annotations

import datetime as dt
import io
import os
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import ray
from PIL import Image

from helpers.score_model import add_posts, face_images, no_face_images, write_model
from pipeline import score
from pipeline.config import load_config
from pipeline.faces.recipe import CropRecipe
from pipeline.model.meta import ModelMeta
from pipeline.score import inference
from pipeline.store import DataRoot, now

OVERRIDES = {
    "faces.num_actors": 1,
    "faces.batch_size": 4,
    "faces.max_side": 320,
    "score.part_rows": 3,
    "score.batch_size": 4,
    "score.block_mb": 0.05,  # a few crops per Ray Data block: the streaming path, many blocks
}
FACES = load_config(None, overrides=OVERRIDES).faces  # the models here record crops made with these settings
RECIPE = CropRecipe.of(FACES, detect=True).to_json()


@pytest.fixture
def cfg(data_root):
    return load_config(None, overrides={"data_root": str(data_root), **OVERRIDES})


def _fake_face_row(sha: str, recipe: str | None = RECIPE) -> dict:
    """A faces row that says "face kept" for an image that has none, made by the model's recipe: proves the stage
    reuses face rows made the way the model's crops are."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 90)).save(buf, format="JPEG")
    return {
        "image_sha256": sha,
        "n_faces": 1,
        "kept": True,
        "crop_jpeg": buf.getvalue(),
        "processed_at": now(),
        "crop_box": [0.0, 0.0, 64.0, 64.0],
        "recipe": recipe,
    }


def _scores(root: DataRoot) -> pd.DataFrame:
    return root.read("scores").to_pandas()


def test_scores_new_images_once_and_reuses_faces(ray_session, cfg, data_root):
    root = DataRoot(cfg.data_root)
    write_model(root, faces=FACES)
    faces = face_images(3)
    coffee, rocket, html = no_face_images()
    shas = add_posts(root, faces + [coffee, rocket, html])
    root.write_part("faces", [_fake_face_row(shas[3])])  # coffee: the face stage "found" a face

    s1 = score.run(cfg)
    assert s1["candidates"] == 6 and s1["to_score"] == 6 and s1["reused_faces"] == 1 and s1["detected_faces"] == 5
    assert s1["scored"] == 6 and s1["parts"] == 2  # part_rows 3
    df = _scores(root)
    assert sorted(df.image_sha256) == sorted(shas) and df.image_sha256.is_unique
    by = df.set_index("image_sha256")
    assert set(df.model_id) == {"20250101T000000-test"} and set(df.run_id) == {s1["run_id"]}
    for sha in shas[:3]:  # the astronaut: a face, a score and a percentile
        r = by.loc[sha]
        assert r.status == "ok" and r.face_found and r.predicted in ("bad", "good")
        assert 0.0 <= r.score <= 1.0 and 0.0 <= r.percentile <= 1.0
    assert by.loc[shas[3]].status == "ok" and by.loc[shas[3]].face_found  # reused row, not re-detected
    assert by.loc[shas[4]].status == "skipped" and not by.loc[shas[4]].face_found
    assert by.loc[shas[4]].reason.startswith("no_face") and pd.isna(by.loc[shas[4]].score)
    assert by.loc[shas[5]].status == "error" and by.loc[shas[5]].reason.startswith("decode_error")
    assert Counter(df.status) == {"ok": 4, "skipped": 1, "error": 1}
    assert (s1["ok"], s1["no_face"], s1["errors"]) == (4, 1, 1)

    # the partition layout: scores/dt=<today>/part-*.parquet, readable by pyarrow and pandas with a dt column
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert s1["partition"] == f"scores/dt={today}"
    assert root.list_dir("scores") == [f"dt={today}"]
    ds = pads.dataset(str(data_root / "scores"), format="parquet", partitioning="hive")
    assert ds.to_table().num_rows == 6
    pdf = pd.read_parquet(data_root / "scores")
    assert len(pdf) == 6 and {str(v) for v in pdf["dt"]} == {today}

    # second run after two new images: only those are scored
    new = add_posts(root, face_images(5)[3:], start=100)
    s2 = score.run(cfg)
    assert (s2["candidates"], s2["already_scored"], s2["to_score"], s2["scored"]) == (8, 6, 2, 2)
    df = _scores(root)
    assert len(df) == 8 and df.image_sha256.is_unique
    assert sorted(df[df.run_id == s2["run_id"]].image_sha256) == sorted(new)

    # third run: nothing left
    s3 = score.run(cfg)
    assert s3["to_score"] == 0 and s3["scored"] == 0 and s3["parts"] == 0
    assert len(_scores(root)) == 8


def test_reuse_reads_only_the_face_rows_to_score(ray_session, cfg, data_root):
    """A second run's face rows come from a filtered streaming scan: only images still to score, once each."""
    root = DataRoot(cfg.data_root)
    write_model(root, faces=FACES)
    first = add_posts(root, no_face_images()[:2])
    root.write_part("faces", [_fake_face_row(s) for s in first])
    s1 = score.run(cfg)
    assert (s1["reused_faces"], s1["detected_faces"], s1["ok"]) == (2, 0, 2)

    second = add_posts(root, face_images(2), start=10)
    root.write_part("faces", [_fake_face_row(s) for s in second])
    root.write_part("faces", [_fake_face_row(second[0])])  # a duplicate face row must not be scored twice
    # the scan behind the reuse: projected columns, and only the wanted image's rows (both copies)
    rows = inference.reused_faces(root, [second[0]]).take_all()
    assert [r["image_sha256"] for r in rows] == [second[0]] * 2
    assert set(rows[0]) == set(inference.FACE_COLUMNS) and rows[0]["kept"] and rows[0]["crop_jpeg"]

    global_block_size = ray.data.DataContext.get_current().target_max_block_size
    s2 = score.run(cfg)
    assert ray.data.DataContext.get_current().target_max_block_size == global_block_size  # bounds stay local
    assert (s2["already_scored"], s2["to_score"], s2["reused_faces"], s2["detected_faces"]) == (2, 2, 2, 0)
    assert s2["scored"] == 2 and s2["ok"] == 2  # fake face rows: "ok" proves they were reused, not re-detected
    df = _scores(root)
    assert sorted(df.image_sha256) == sorted(first + second) and df.image_sha256.is_unique
    assert sorted(df[df.run_id == s2["run_id"]].image_sha256) == sorted(second)


def test_the_face_read_is_planned_with_one_footer_actor_and_leaves_the_environment(monkeypatch):
    """Ray Data plans a Parquet read with its unit size and footer-reader actors taken from the environment: both
    are set while ``read_parquet`` runs (one footer actor: Ray's 32 started a worker process each) and restored."""
    seen, key = {}, "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
    monkeypatch.setenv(key, "7")  # a user's own setting outside the read stays as it was
    monkeypatch.delenv("RAY_DATA_PARQUET_BIN_PACKING_BYTES", raising=False)

    class FakeDataset:
        def select_columns(self, cols):
            return self

        def filter(self, expr):
            return self

    def read_parquet(paths, **kwargs):
        seen.update({k: os.environ.get(k) for k in (key, "RAY_DATA_PARQUET_BIN_PACKING_BYTES")})
        return FakeDataset()

    class Root:
        fs = None

        def part_files(self, name):
            return ["faces/part-0.parquet"]

    monkeypatch.setattr(ray.data, "read_parquet", read_parquet)
    inference.reused_faces(Root(), None, read_unit_mb=1.0)
    assert seen == {key: "1", "RAY_DATA_PARQUET_BIN_PACKING_BYTES": str(2**20)}
    assert os.environ[key] == "7" and "RAY_DATA_PARQUET_BIN_PACKING_BYTES" not in os.environ


def test_face_rows_made_another_way_are_cropped_again(ray_session, cfg, data_root):
    """A faces row made by another recipe than the model's (here: taken as given, or from before rows recorded
    it) is not reused: the image is cropped again the model's way (the astronaut's face is found, so the row is
    ``ok``, where the fake rows of images without a face would have scored too)."""
    root = DataRoot(cfg.data_root)
    write_model(root, faces=FACES)
    shas = add_posts(root, face_images(2) + no_face_images()[:1])
    other = CropRecipe.of(FACES, detect=False).to_json()
    root.write_part("faces", [_fake_face_row(shas[0], other), _fake_face_row(shas[1], None),
                              _fake_face_row(shas[2], other)])  # fmt: skip
    s = score.run(cfg)
    assert (s["reused_faces"], s["detected_faces"]) == (0, 3), s
    by = _scores(root).set_index("image_sha256")
    assert by.loc[shas[0]].status == by.loc[shas[1]].status == "ok" and by.loc[shas[2]].status == "skipped"


def test_killed_run_then_rerun_scores_each_image_once(ray_session, cfg, data_root):
    root = DataRoot(cfg.data_root)
    write_model(root, faces=FACES)
    shas = add_posts(root, face_images(4) + no_face_images()[:2])
    s1 = score.run(cfg)
    assert s1["scored"] == 6 and s1["parts"] == 2
    # what a run killed after its first part leaves: one whole part and a half-written temp file
    parts = root.part_files("scores")
    root.fs.delete_file(parts[1])
    tmp = root.path(s1["partition"], "_tmp", "part-half.parquet")
    root.write_bytes_atomic(tmp, b"PAR1 half written")
    left = set(root.read("scores", columns=["image_sha256"])["image_sha256"].to_pylist())
    assert len(left) == 3

    s2 = score.run(cfg)
    assert s2["already_scored"] == 3 and s2["scored"] == 3
    df = _scores(root)
    assert sorted(df.image_sha256) == sorted(shas) and df.image_sha256.is_unique
    assert not root.exists(s1["partition"], "_tmp", "part-half.parquet")


def test_scores_a_folder_of_new_images(ray_session, cfg, data_root, tmp_path):
    # crops decoded in the read (here: detection) tasks, as for GPU actors; the other tests decode in the actor,
    # and test_crops_decoded_in_the_read_tasks_score_like_predict checks both give predict's rows
    cfg.score.decode = "read"
    root = DataRoot(cfg.data_root)
    write_model(root, faces=FACES)
    folder = tmp_path / "new"
    folder.mkdir()
    imgs = face_images(2)
    for i, b in enumerate(imgs):
        (folder / f"img{i}.jpg").write_bytes(b)
    (folder / "notes.txt").write_text("not an image")
    s = score.run(cfg, images=str(folder))
    assert s["candidates"] == 2 and s["scored"] == 2 and s["ok"] == 2
    assert all(root.has_image(sha) for sha in root.read("scores")["image_sha256"].to_pylist())
    assert score.run(cfg, images=str(folder))["scored"] == 0


def test_missing_inputs_are_named(ray_session, cfg):
    root = DataRoot(cfg.data_root)
    with pytest.raises(FileNotFoundError, match="train"):
        score.run(cfg)
    write_model(root, faces=FACES)
    from pipeline.store import MissingDatasetError

    with pytest.raises(MissingDatasetError, match="posts"):
        score.run(cfg)


def _binary_meta(tc) -> ModelMeta:
    """model.json of a binary selfie model with ``tc``'s backbone and image size (what LoadedModel reads)."""
    from pipeline.model.backbones import backbone

    mean, std = backbone(tc.backbone).normalisation
    return ModelMeta(
        model_id="m",
        task="selfie",
        kind="binary",
        backbone=tc.backbone,
        num_outputs=2,
        class_names=["bad", "good"],
        image_size=tc.image_size,
        mean=mean,
        std=std,
        train_config=tc.model_dump(),
    )


@pytest.mark.parametrize("backbone,size", [("small_cnn", 48), ("resnet18", 64)])
def test_inference_optimisation_keeps_the_scores(backbone, size, monkeypatch):
    """Folded batch norms + channels-last give the eager model's scores; a disagreeing result is refused."""
    import torch

    from pipeline.config import TrainConfig
    from pipeline.model.loaded import LoadedModel
    from pipeline.model.network import build_model

    torch.manual_seed(0)
    tc = TrainConfig(task="selfie", backbone=backbone, image_size=size)
    net = build_model(tc, 2, load_pretrained=False)
    for m in net.modules():  # trained-looking batch-norm statistics, so that folding them changes the weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    meta = _binary_meta(tc)
    rng = np.random.default_rng(0)
    crops = [Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)) for _ in range(5)]
    m = LoadedModel(meta, net.state_dict(), [0.2, 0.5, 0.8], "cpu")
    eager, names = m.predict(crops)
    assert m.optimize_for_inference() == "fused+channels_last+onednn_graph"
    fast, fast_names = m.predict(crops)
    assert np.abs(fast - eager).max() < 1e-4 and fast_names == names
    assert m.embed(crops).shape[0] == 5  # the eager model still serves embeddings
    assert np.abs(m.predict(crops[:2])[0] - eager[:2]).max() < 1e-4  # another batch size: the graph re-specialises
    m.use_precision("bf16")  # score.precision: bf16 autocast, close to the fp32 scores
    low, low_names = m.predict(crops)
    assert low.dtype == np.float64 and np.abs(low - eager).max() < 0.05
    assert 0 < np.abs(low - fast).max()  # really bf16: the traced fp32 graph would ignore autocast
    m.use_precision("fp32")
    # fp32 again (the traced graph: its first calls at a new batch size run unfused, equal to 1e-7, not bitwise)
    assert np.abs(m.predict(crops)[0] - fast).max() < 1e-6
    with pytest.raises(ValueError, match="fp32 or bf16"):
        m.use_precision("fp16")

    import torch.fx.experimental.optimization as opt

    class _Shifted(torch.nn.Module):  # an "optimisation" that changes the outputs must not be used
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 1.0

    real_fuse = opt.fuse
    monkeypatch.setattr(opt, "fuse", lambda model: _Shifted(real_fuse(model)))
    m2 = LoadedModel(meta, net.state_dict(), [0.2, 0.5, 0.8], "cpu")
    assert m2.optimize_for_inference() == "eager"
    assert np.abs(m2.predict(crops)[0] - eager).max() < 1e-6


def test_crops_decoded_in_the_read_tasks_score_like_predict():
    """prepare_crops (read tasks) + score_prepared (actor) give LoadedModel.predict's scores; every bad row is
    a row with a status and a reason, and a row the model fails on costs only that row."""
    import pyarrow as pa
    import torch

    from pipeline.config import TrainConfig
    from pipeline.imaging import decode_image
    from pipeline.model.loaded import LoadedModel
    from pipeline.model.network import build_model

    torch.manual_seed(0)
    tc = TrainConfig(task="selfie", backbone="small_cnn", image_size=40)
    model = LoadedModel(
        _binary_meta(tc), build_model(tc, 2, load_pretrained=False).state_dict(), [0.2, 0.5, 0.8], "cpu"
    )
    rng = np.random.default_rng(1)
    jpegs = []
    for _ in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    rows = pa.table(
        {
            "image_sha256": ["a", "b", "c", "bad", "noface", "nocrop", "err"],
            "kept": [True, True, True, True, False, True, False],
            "reason": [None, None, None, None, "no_face", None, "decode_error: truncated"],
            "crop_jpeg": [*jpegs, jpegs[0][:40], None, None, None],
        }
    )
    prepared = inference.prepare_crops(rows, 40)
    assert prepared["pixels"].shape == (7, 40, 40, 3) and prepared["pixels"].dtype == np.uint8
    assert prepared["decoded"].tolist() == [True, True, True, False, False, False, False]
    out = inference.score_prepared(model, prepared, "run-1").to_pandas().set_index("image_sha256")
    want, names = model.predict([decode_image(j) for j in jpegs])
    assert np.allclose(out.loc[["a", "b", "c"], "score"], want, atol=1e-6)
    assert out.loc[["a", "b", "c"], "predicted"].tolist() == names
    assert (out.loc[["a", "b", "c"], "status"] == "ok").all() and out.loc[["a", "b", "c"], "face_found"].all()
    assert out.loc["bad", "status"] == "error" and out.loc["bad", "reason"].startswith("crop_decode_error")
    assert out.loc["bad", "face_found"] and pd.isna(out.loc["bad", "score"])
    assert tuple(out.loc["noface", ["status", "reason"]]) == ("skipped", "no_face")
    assert tuple(out.loc["nocrop", ["status", "reason"]]) == ("skipped", "no_face")
    assert out.loc["err", "status"] == "error" and not out.loc["err", "face_found"]
    assert set(out.run_id) == {"run-1"} and set(out.model_id) == {"m"}

    real = model.predict_pixels

    def fails_on_b(pixels):  # the model fails on b's pixels only
        if any(np.array_equal(p, prepared["pixels"][1]) for p in pixels):
            raise RuntimeError("boom")
        return real(pixels)

    model.predict_pixels = fails_on_b
    out = inference.score_prepared(model, prepared, "run-2").to_pandas().set_index("image_sha256")
    assert out.loc["b", "status"] == "error" and out.loc["b", "reason"].startswith("model_error: boom")
    assert np.allclose(out.loc[["a", "c"], "score"], want[[0, 2]], atol=1e-6)


def test_scoring_actor_runs_batches_side_by_side(data_root):
    """score.calls_per_actor: batches called from several threads at once (as Ray Data does with
    ``max_concurrent_calls_per_actor``) score exactly as one after another; on a CPU the actor's threads are split
    among the forward passes, never more in all; on a GPU the passes take turns (``inference.pass_layout``)."""
    import threading

    import pyarrow as pa
    import torch

    root = DataRoot(str(data_root))
    model_dir = write_model(root, image_size=40, faces=FACES)
    rng = np.random.default_rng(2)
    batches = []
    for b in range(6):
        jpegs = []
        for _ in range(5):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(buf, format="JPEG")
            jpegs.append(buf.getvalue())
        shas = [f"{b}-{i}" for i in range(5)]
        batches.append(pa.table({"image_sha256": shas, "kept": [True] * 5, "reason": [None] * 5, "crop_jpeg": jpegs}))
    before = torch.get_num_threads()
    try:
        one = inference.Scorer(model_dir, root.uri, "r", "cpu", threads=2, calls=1)
        assert torch.get_num_threads() == 2 and one._passes._value == 1
        want = pd.concat([one(b).to_pandas() for b in batches]).set_index("image_sha256")
        two = inference.Scorer(model_dir, root.uri, "r", "cpu", threads=2, calls=2)
        assert torch.get_num_threads() == 1 and two._passes._value == 2  # two one-thread passes side by side
        three = inference.Scorer(model_dir, root.uri, "r", "cpu", threads=2, calls=3)  # the default: a third waits
        assert torch.get_num_threads() == 1 and three._passes._value == 2
        assert inference.Scorer(model_dir, root.uri, "r", "cpu", threads=1, calls=2)._passes._value == 1
        assert inference.Scorer(model_dir, root.uri, "r", "cpu", threads=4, calls=2)._passes._value == 2
        assert torch.get_num_threads() == 2
        # the layout the actor uses, which bench_score.py's ceiling runs too: (threads per pass, passes at once)
        assert inference.pass_layout("cpu", 2, 3) == (1, 2) and inference.pass_layout("cpu", 4, 2) == (2, 2)
        assert inference.pass_layout("cpu", 1, 3) == (1, 1) and inference.pass_layout("cuda", 2, 3) == (2, 1)
        got: dict[int, pd.DataFrame] = {}

        def call(i: int) -> None:
            got[i] = two(batches[i]).to_pandas()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = pd.concat(got.values()).set_index("image_sha256").loc[want.index]
        assert (out.status == "ok").all() and len(out) == 30
        assert np.allclose(out.score, want.score, atol=1e-6) and (out.predicted == want.predicted).all()
    finally:
        torch.set_num_threads(before)


def test_the_score_driver_plans_without_torch(data_root):
    """The stage's driver (a job's entrypoint) finds the model and reads its model.json without importing torch:
    only the scoring actors load the weights (importing torch costs the driver 1.5 s and its memory)."""
    import subprocess
    import sys

    root = DataRoot(str(data_root))
    model_dir = write_model(root, image_size=40, faces=FACES)
    code = (
        "import sys\n"
        "from pipeline import cli, score\n"
        "from pipeline.store import DataRoot\nfrom pipeline.model.meta import model_meta, resolve_model_dir\n"
        f"root = DataRoot({str(data_root)!r})\n"
        "d = resolve_model_dir(root, 'latest')\n"
        "print(d, model_meta(root, d).image_size, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == [model_dir, "40", "False"]


def test_one_score_for_crops_and_pixels():
    """LoadedModel.score, the post-processing the score stage, rate and the report share: predict's scores, their
    test-set percentiles and class names, the same from PIL crops and from prepared pixels; empty in, empty out."""
    import torch

    from pipeline.config import TrainConfig
    from pipeline.model.loaded import LoadedModel
    from pipeline.model.network import build_model
    from pipeline.model.pixels import model_pixels

    torch.manual_seed(0)
    tc = TrainConfig(task="selfie", backbone="small_cnn", image_size=40)
    m = LoadedModel(_binary_meta(tc), build_model(tc, 2, load_pretrained=False).state_dict(), [0.2, 0.5, 0.8], "cpu")
    rng = np.random.default_rng(3)
    crops = [Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)) for _ in range(4)]
    want, names = m.predict(crops)
    out = m.score(crops)
    assert out.score.dtype == np.float64 and np.allclose(out.score, want) and out.predicted == names
    assert np.array_equal(out.percentile, m.percentile(want)) and set(out.percentile) <= {0.0, 1 / 3, 2 / 3, 1.0}
    by_pixels = m.score(pixels=np.stack([model_pixels(c, 40) for c in crops]))
    assert np.allclose(by_pixels.score, out.score, atol=1e-6) and by_pixels.predicted == names
    empty = m.score([])
    assert len(empty.score) == len(empty.percentile) == len(empty.predicted) == 0
    with pytest.raises(TypeError, match="exactly one"):
        m.score(crops, pixels=np.zeros((1, 40, 40, 3), np.uint8))


def test_the_model_folder_format_has_one_definition(data_root):
    """model.json is written and read through the store's ModelMeta: the export's fields round-trip, k-fold's own
    fields appear only when set, and a malformed file or value is refused with one line saying what is wrong."""
    import dataclasses

    from pipeline.model.meta import model_meta, resolve_model_dir, write_model_meta

    root = DataRoot(str(data_root))
    d = write_model(root, run_id="r1", task="department", image_size=40, faces=FACES)
    raw = root.read_json(f"{d}/model.json")
    assert set(raw) == {
        "model_id", "task", "kind", "backbone", "num_outputs", "class_names", "image_size", "mean", "std",
        "target_mean", "target_std", "best_epoch", "created_at", "train_config", "inputs",
    }  # fmt: skip
    assert raw["inputs"]["crop"] == CropRecipe.from_json(RECIPE).to_dict()
    meta = model_meta(root, d)
    assert (meta.model_id, meta.task, meta.kind, meta.num_outputs, meta.image_size) == (
        "r1", "department", "multiclass", 4, 40,
    )  # fmt: skip
    assert ModelMeta.from_dict(meta.to_dict()) == meta and resolve_model_dir(root, "latest:department") == d

    fold = dataclasses.replace(meta, model_id="r2", fold=1, fold_model_dir=d)
    d2 = root.model_dir("r2")
    write_model_meta(root, d2, fold)
    assert root.read_json(f"{d2}/model.json")["fold"] == 1 and model_meta(root, d2) == fold

    with pytest.raises(ValueError, match="kind must be one of binary, multiclass, regression"):
        dataclasses.replace(meta, kind="ranking")
    with pytest.raises(ValueError, match="3 class_names for 4 outputs"):
        dataclasses.replace(meta, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="one value per colour channel"):
        dataclasses.replace(meta, mean=[0.5])
    with pytest.raises(ValueError, match="inputs must be a mapping with a 'crop' entry"):
        dataclasses.replace(meta, inputs={"pixels": {}})
    bad = {k: v for k, v in raw.items() if k != "image_size"} | {"colour": "red"}
    root.write_json(f"{d}/model.json", bad)
    with pytest.raises(ValueError, match=r"model\.json: missing image_size; unknown keys colour") as err:
        model_meta(root, d)
    assert "\n" not in str(err.value)
