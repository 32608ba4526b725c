"""The train stage on a tiny synthetic data root: it learns, exports, resumes, and refuses bad input."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from helpers.train import brightness_crop, cfg_for, make_root
from pipeline.store import DataRoot
from pipeline.train import LoadedModel, TrainInputError, resolve_model_dir, run


@pytest.mark.slow
def test_selfie_learns_exports_resumes_and_predicts(ray_session, tmp_path):
    root, crops, classes = make_root(tmp_path)
    first = run(cfg_for(tmp_path, run_id="20260101T000000Z-selfie", epochs=2))
    d = root.model_dir("20260101T000000Z-selfie")
    m1 = root.read_json(f"{d}/metrics.json")
    assert [h["epoch"] for h in m1["history"]] == [0, 1]
    assert first["run_id"] == "20260101T000000Z-selfie"

    again = run(cfg_for(tmp_path, run_id="20260101T000000Z-selfie", epochs=5), resume=True)
    m2 = root.read_json(f"{d}/metrics.json")
    assert [h["epoch"] for h in m2["history"]] == [0, 1, 2, 3, 4]
    assert m2["history"][:2] == m1["history"]  # continued from the checkpoint, not restarted
    test = m2["test"]
    assert test["n"] == 20 and again["test"]["accuracy"] == test["accuracy"]
    assert test["accuracy"] >= 0.75, test  # chance is 0.5
    assert test["roc_auc"] >= 0.9
    assert set(test["per_class"]) == {"bad", "good"} and np.sum(test["confusion"]) == 20

    meta = root.read_json(f"{d}/model.json")
    assert meta["model_id"] == "20260101T000000Z-selfie" and meta["class_names"] == ["bad", "good"]
    assert meta["image_size"] == 32 and meta["num_outputs"] == 2 and len(meta["mean"]) == 3
    for name in ("model.pt", "test_scores.json", "plots/training_curve.png", "plots/confusion.png", "plots/roc.png"):
        assert root.fs.get_file_info(f"{d}/{name}").size > 0, name

    assert resolve_model_dir(root, "latest") == d
    assert resolve_model_dir(root, "20260101T000000Z-selfie") == d
    model = LoadedModel.load(resolve_model_dir(root, "latest"), root)
    assert model.task == "selfie" and model.class_names == ["bad", "good"]
    images = [Image.open(io.BytesIO(c)) for c in crops[-20:]]
    scores, names = model.predict(images)
    assert scores.shape == (20,) and np.all((scores >= 0) & (scores <= 1))
    acc = np.mean([(s > 0.5) == bool(c) for s, c in zip(scores, classes[-20:], strict=True)])
    assert acc == test["accuracy"]  # the loader scores exactly as the trainer evaluated
    assert names[int(np.argmax(scores))] == "good"
    assert model.embed(images[:3]).shape == (3, 128)
    pct = model.percentile([-1.0, 2.0, float(np.median(scores))])
    assert pct[0] == 0.0 and pct[1] == 1.0 and 0.2 < pct[2] < 0.8

    with pytest.raises(TrainInputError, match="already exists"):
        run(cfg_for(tmp_path, run_id="20260101T000000Z-selfie"))


@pytest.mark.slow
def test_regression_beauty(ray_session, tmp_path):
    root, _, _ = make_root(tmp_path, task="beauty", seed=1)
    out = run(cfg_for(tmp_path, task="beauty", epochs=4, freeze_epochs=1, finetune_lr=0.003))
    assert out["kind"] == "regression" and out["class_names"] == []
    m = root.read_json(f"{out['model_dir']}/metrics.json")
    assert [h["phase"] for h in m["history"]] == ["head", "full", "full", "full"]
    assert m["test"]["pearson"] > 0.6, m["test"]
    assert m["test"]["mae"] < 1.0  # targets span about 1.8..4.3
    for name in ("scatter.png", "histograms.png", "training_curve.png"):
        assert root.fs.get_file_info(f"{out['model_dir']}/plots/{name}").size > 0
    model = LoadedModel.load(out["model_dir"])
    scores, names = model.predict([Image.new("RGB", (64, 64), (200, 200, 200)), Image.new("RGB", (64, 64), (60,) * 3)])
    assert names == [None, None] and scores[0] > scores[1]
    assert json.loads(root.read_bytes(f"{out['model_dir']}/test_scores.json")) == sorted(
        json.loads(root.read_bytes(f"{out['model_dir']}/test_scores.json"))
    )


def _relabel(root: DataRoot, task: str, fn) -> None:
    t = root.read(f"labels/{task}").to_pylist()
    root.replace(f"labels/{task}", pa.Table.from_pylist([fn(r) or r for r in t]))


@pytest.mark.parametrize(
    ("task", "change", "overrides", "message"),
    [
        ("selfie", lambda r: r.update(label=1, class_name="good"), {}, "only one class"),
        ("selfie", lambda r: r.update(split="train") if r["split"] == "val" else None, {}, "'val' split is empty"),
        ("beauty", lambda r: r.update(target=float("nan")) if r["item_id"] == "p3" else None, {}, "NaN"),
        ("selfie", lambda r: r.update(image_sha256="f" * 64) if r["item_id"] == "p5" else None, {}, "no kept face"),
        ("selfie", None, {"num_workers": 8}, "cluster has"),
        ("selfie", None, {"kfold": True}, "needs a fold column"),
    ],
)
def test_bad_input_fails_before_training(ray_session, tmp_path, task, change, overrides, message):
    root, _, _ = make_root(tmp_path, task=task, n=20)
    if change is not None:
        _relabel(root, task, change)
    with pytest.raises(TrainInputError, match=message):
        run(cfg_for(tmp_path, task=task, **overrides))
    assert not root.exists("models")


def test_crops_made_two_ways_are_refused_before_training(tmp_path):
    """A label set whose crops were made by two recipes (here: four images cropped again by MTCNN) cannot make a
    model that scores the way it was tested: refused with one line naming the difference."""
    from helpers.train import RECIPE
    from pipeline.config import FacesConfig
    from pipeline.faces.recipe import CropRecipe
    from pipeline.train.data import load_labels

    root, _, _ = make_root(tmp_path, n=20)
    faces = root.read("faces").to_pylist()
    other = CropRecipe.of(FacesConfig(crop_size=64), detect=True).to_json()
    for r in faces[:4]:
        r["recipe"] = other
    root.replace("faces", pa.Table.from_pylist(faces, schema=root.schema("faces")))
    with pytest.raises(TrainInputError, match=r"crops were made in 2 ways \(mode as_given != detect; 16, 4 crops\)"):
        load_labels(root, cfg_for(tmp_path).train)
    assert load_labels(make_root(tmp_path / "one", n=20)[0], cfg_for(tmp_path / "one").train).recipe == RECIPE


def test_missing_inputs_are_named(ray_session, tmp_path):
    from pipeline.store import MissingDatasetError

    with pytest.raises(MissingDatasetError, match="labels/selfie"):
        run(cfg_for(tmp_path))


def test_backbones_heads_and_local_pretrained_file(tmp_path):
    import torch

    from pipeline.config import TrainConfig
    from pipeline.model.network import build_model

    for backbone, size, dim in (("resnet18", 64, 512), ("inception_resnet_v1", 112, 512), ("small_cnn", 32, 128)):
        m = build_model(TrainConfig(backbone=backbone), num_outputs=4).eval()
        x = torch.rand(2, 3, size, size)
        assert m(x).shape == (2, 4) and m.embed(x).shape == (2, dim)
    src = build_model(TrainConfig(backbone="small_cnn"), 2)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build_model(TrainConfig(backbone="small_cnn", pretrained=str(tmp_path / "w.pt")), 1)
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(v, dst.backbone.state_dict()[k]), k
    with pytest.raises(FileNotFoundError, match="never downloaded|not a file"):
        build_model(TrainConfig(backbone="resnet18", pretrained="imagenet"), 2)


def test_precise_bn_recomputes_statistics_with_the_current_weights():
    """After training, eval-mode batch norms use statistics of the final weights over the crops, not running
    averages of earlier weights: the first BN's running mean is the mean of its inputs over the crops."""
    import torch

    from pipeline.config import TrainConfig
    from pipeline.model.network import build_model
    from pipeline.train.loop import _precise_bn, _rank

    tc = TrainConfig(backbone="small_cnn", image_size=32, batch_size=8)
    model = build_model(tc, 2)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:  # stale statistics, as after a few steps
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(9.0)
    rng = np.random.default_rng(0)
    jpegs = [brightness_crop(float(b), rng) for b in rng.uniform(40, 220, size=24)]
    seen = []
    hook = bns[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    assert _precise_bn(model, jpegs, tc, torch.device("cpu"), world=1) == 24
    hook.remove()
    x = torch.cat(seen)  # three batches of 8: update_bn's cumulative average is the plain mean
    assert torch.allclose(bns[0].running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bns[0].running_var, torch.stack([b.var(dim=(0, 2, 3)) for b in seen]).mean(0), atol=1e-4)
    assert all(bn.momentum == 0.1 for bn in bns) and model.training  # the model is left as it was found
    assert _precise_bn(model, [], tc, torch.device("cpu"), world=1) == 0

    # best epoch: the metric first, ties broken by the lower validation loss
    recs = [{"score": 0.76, "val_loss": 1.0}, {"score": 0.76, "val_loss": 0.75}, {"score": 0.74, "val_loss": 0.5}]
    assert max(recs, key=_rank) is recs[1]


def test_fold_splits_are_person_level_and_deterministic():
    from pipeline.train.data import fold_splits

    persons = [f"u{i % 40}" for i in range(120)]  # three rows per person
    t = pa.table({"person_id": persons, "fold": [int(p[1:]) % 3 for p in persons], "split": ["train"] * 120})
    roles = {}
    for k in range(3):
        s = fold_splits(t, k, 0.25, seed=0)
        assert s["split"].to_pylist() == fold_splits(t, k, 0.25, seed=0)["split"].to_pylist()
        by_person: dict[str, set] = {}
        for p, f, sp in zip(persons, t["fold"].to_pylist(), s["split"].to_pylist(), strict=True):
            by_person.setdefault(p, set()).add(sp)
            assert (sp == "test") == (f == k)
            if sp != "test":
                roles.setdefault(p, set()).add(sp)
        assert all(len(v) == 1 for v in by_person.values())  # a person is on one side only
        assert {"train", "val", "test"} <= set(s["split"].to_pylist())
    assert all(len(v) == 1 for v in roles.values())  # same train/val role in every fold


@pytest.mark.slow
def test_kfold_trains_each_fold_and_exports_one(ray_session, tmp_path):
    root, crops, classes = make_root(tmp_path, n=60, folds=2)
    run_id = "20260101T000000Z-selfie"
    out = run(cfg_for(tmp_path, run_id=run_id, epochs=1, num_workers=1, cpus_per_worker=1, kfold=True))
    d = root.model_dir(run_id)
    table = root.read_json(f"{d}/kfold.json")
    assert [r["fold"] for r in table["folds"]] == [0, 1]
    for r in table["folds"]:
        assert r["counts"]["test"] == 30 and r["counts"]["train"] + r["counts"]["val"] == 30
        assert root.read_json(f"{d}/folds/fold{r['fold']}/model.json")["kind"] == "binary"
    accs = [r["test"]["accuracy"] for r in table["folds"]]
    assert table["mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert table["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert {"roc_auc", "precision[good]", "recall[bad]"} <= set(table["mean"])
    md = root.read_bytes(f"{d}/kfold.md").decode()
    assert "| mean ± std |" in md and md.count("\n| 0 |") + md.count("\n| 1 |") == 2
    chosen = table["exported_fold"]
    assert chosen == max(table["folds"], key=lambda r: (r["val_score"], -r["fold"]))["fold"]
    assert out["kfold"]["exported_fold"] == chosen and out["test"]["n"] == 30

    assert resolve_model_dir(root, "latest") == d == resolve_model_dir(root, "latest:selfie")
    with pytest.raises(FileNotFoundError, match="task 'beauty'"):
        resolve_model_dir(root, "latest:beauty")
    meta = root.read_json(f"{d}/model.json")
    assert meta["model_id"] == run_id and meta["fold"] == chosen
    model = LoadedModel.load(d, root)
    fold_model = LoadedModel.load(f"{d}/folds/fold{chosen}", root)
    images = [Image.open(io.BytesIO(c)) for c in crops[:6]]
    assert np.allclose(model.predict(images)[0], fold_model.predict(images)[0])
    assert root.read_json(f"{d}/metrics.json")["kfold"]["exported_fold"] == chosen


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cache", "driver_mb"), [(True, 0.0), (True, 128.0), (False, 128.0)], ids=["ray-data", "driver", "streamed"]
)
def test_one_scan_feeds_every_split(ray_session, tmp_path, cache, driver_mb):
    """make_datasets: each split holds exactly its labelled kept crops with their targets, from one scan of the
    faces table: val and test once over the workers' shards; train in equal shards (``cache`` false: one lazy
    train set that Ray Train splits), short of at most one row per extra worker. The same rows whether Ray Data's
    tasks read the table or the driver does (a table under ``driver_mb``: Arrow tables in the object store, no Ray
    Data)."""
    from pipeline.config import TrainConfig
    from pipeline.train.data import load_labels, make_datasets, read_shard

    root, crops, classes = make_root(tmp_path)
    faces = root.read("faces").to_pylist()
    faces.append({**faces[0], "image_sha256": "f" * 64, "kept": False})  # a row the face stage did not keep
    faces[1]["kept"] = False  # a labelled image whose face was not kept: in no split
    root.replace("faces", pa.Table.from_pylist(faces))
    labels = load_labels(root, TrainConfig(task="selfie", allow_missing_crops=True))
    out = make_datasets(root, labels, world_size=2, cache=cache, driver_mb=driver_mb)
    train = ["train_0", "train_1"] if cache else ["train"]
    assert sorted(out) == sorted(["test_0", "test_1", *train, "val_0", "val_1"])
    shards = {n: read_shard(ds).to_pylist() for n, ds in out.items()}  # as the workers read them
    if cache:  # DDP needs the same number of steps on every worker
        assert len(shards["train_0"]) == len(shards["train_1"])
    for split, names in (("train", train), ("val", ["val_0", "val_1"]), ("test", ["test_0", "test_1"])):
        rows = [r for n in names for r in shards[n]]
        assert all(set(r) == {"image_sha256", "crop_jpeg", "y"} for r in rows)  # the key: test_predictions
        got = sorted((bytes(r["crop_jpeg"]), float(r["y"])) for r in rows)
        shas = set(labels.split(split)["image_sha256"].to_pylist())
        want = sorted(
            (c, float(y))
            for i, (c, y) in enumerate(zip(crops, classes, strict=True))
            if hashlib.sha256(c).hexdigest() in shas and i != 1
        )
        assert len(want) >= 19, split
        if split == "train" and cache:  # 59 rows in two equal shards: one left out, none twice
            assert len(got) == len(want) - 1 and len(set(got)) == len(got) and set(got) < set(want)
        else:
            assert got == want, split


def test_cosine_schedule_sets_each_group_from_its_base_rate():
    """``train.lr_schedule: cosine``: every parameter group at its base rate times half a cosine over the run
    (1 at the start, 0.5 half way, near 0 at the end); ``constant`` leaves the rates alone."""
    from pipeline.config import TrainConfig
    from pipeline.train.loop import TrainWorker

    def worker(schedule: str) -> TrainWorker:
        tc = TrainConfig(task="t", backbone="small_cnn", image_size=32, epochs=4, lr=0.01, lr_schedule=schedule,
                         backbone_lr_scale=0.1)  # fmt: skip
        w = TrainWorker.local({"train": tc.model_dump(), "kind": "binary", "num_outputs": 2, "class_names": ["a", "b"],
                               "class_weights": None, "target_mean": 0.0, "target_std": 1.0})  # fmt: skip
        w.set_phase(0)
        return w

    w = worker("cosine")
    for t, want in ((0.0, 1.0), (2.0, 0.5), (4.0, 0.0), (1.0, 0.5 * (1 + np.cos(np.pi / 4)))):
        w.set_lr(t)
        assert [g["lr"] for g in w.opt.param_groups] == pytest.approx([0.01 * want, 0.001 * want]), t
    c = worker("constant")
    c.set_lr(3.0)
    assert [g["lr"] for g in c.opt.param_groups] == pytest.approx([0.01, 0.001])
