"""forget against the commands outside the stages (report, label imports, retention): they hold locks that forget
holds too, and a report leaves out, and checks again right before it writes, every face on the opt-out list."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import pytest

from helpers.images import noise_jpeg
from helpers.score_model import model_recipe_json, write_model
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.locks import StageLockedError
from pipeline.privacy import KEY_ENV, OptOut, forget, subject_hash
from pipeline.report.html import OptedOutFaceError, write_report
from pipeline.store import DataRoot, now

RECIPE = model_recipe_json()  # the crops of the models write_model makes are made this way


def _root(tmp_path: Path, n: int = 6):
    """Posts of user U (the first image) and others, their faces, a model and its scores; returns (cfg, root, shas,
    crops)."""
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d"), "score.report_grid": 3})
    root = DataRoot(cfg.data_root)
    shas = [root.put_image(noise_jpeg(64, 64, i)) for i in range(n)]
    crops = {s: noise_jpeg(40, 40, 100 + i) for i, s in enumerate(shas)}
    posts = [{"site": "s", "item_id": f"p{i}", "user_id": "U" if i == 0 else f"o{i}", "status": "ok",
              "image_sha256": s} for i, s in enumerate(shas)]  # fmt: skip
    root.write_part("posts", posts)
    root.write_part(
        "faces",
        [{"image_sha256": s, "kept": True, "crop_jpeg": c, "recipe": RECIPE} for s, c in crops.items()],
    )
    write_model(root, run_id="m1")
    root.write_part("scores/dt=2026-01-01", _scores(shas))
    return cfg, root, shas, crops


def _scores(shas: list[str]) -> list[dict]:
    return [{"image_sha256": s, "model_id": "m1", "score": 0.9 - 0.1 * i, "status": "ok", "scored_at": now()}
            for i, s in enumerate(shas)]  # fmt: skip


def _paused(monkeypatch, target, name: str):
    """Replace ``target.name`` with a version that waits for ``go`` after setting ``at``; returns (at, go)."""
    at, go = threading.Event(), threading.Event()
    real = getattr(target, name)

    def wait_then_run(*a, **kw):
        at.set()
        assert go.wait(60)
        return real(*a, **kw)

    monkeypatch.setattr(target, name, wait_then_run)
    return at, go


def test_a_report_being_written_holds_off_forget_and_is_removed_by_it_afterwards(tmp_path, monkeypatch):
    import pipeline.report.html as report_html

    cfg, root, shas, crops = _root(tmp_path)
    built, go = _paused(monkeypatch, report_html, "_write_with_sidecar")
    t = threading.Thread(target=write_report, args=("m1", cfg))
    t.start()
    try:
        assert built.wait(120)  # the page is built with U's face in it, not yet written
        with pytest.raises(StageLockedError, match="report"):
            forget(cfg, "user", "U")
        assert len([p for p in root.read("posts").to_pylist() if p["user_id"] == "U"]) == 1  # nothing erased
    finally:
        go.set()
        t.join(120)
    listed = root.read_json(root.path("models", "m1", "report.images.json"))["image_sha256"]
    assert shas[0] in listed
    out = forget(cfg, "user", "U")  # now: the page that shows U goes
    assert out["reports_removed"] == 1 and not root.exists("models", "m1", "report.html")


def test_commands_outside_the_stages_exit_4_while_forget_runs(tmp_path, monkeypatch, capsys):
    import pipeline.privacy.erasure as erasure

    cfg, root, shas, _ = _root(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(noise_jpeg(64, 64, 40))
    (src / "set.csv").write_text("file,label\na.jpg,1\n")
    (src / "scores.txt").write_text("a.jpg 3.5\n")
    inside, go = _paused(monkeypatch, erasure, "_forget")
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(out=forget(cfg, "user", "U")))
    t.start()
    data = ["--data-root", cfg.data_root]
    try:
        assert inside.wait(60)  # forget holds its locks
        commands = {
            "report": ["report", "--run", root.path("models", "m1")],
            "import-classes": ["labels", "import-classes", "--task", "probe", "--csv", str(src / "set.csv"),
                               "--images", str(src), "--no-detect", *data],
            "import-scores": ["labels", "import-scores", "--images", str(src), "--scores", str(src / "scores.txt"),
                              "--no-detect", *data],
            "retention": ["retention", "--set", "privacy.raw_image_retention_days=0", *data],
        }  # fmt: skip
        for name, argv in commands.items():
            assert main(argv) == 4, name
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "already running on this data root" in err, (name, err)
        assert not root.exists("models", "m1", "report.html") and not root.exists("labels", "probe")
        assert not root.exists("labels", "beauty") and all(root.has_image(s) for s in shas)
    finally:
        go.set()
        t.join(60)
    assert result["out"]["rows_removed"]["posts"] == 1


def test_an_import_in_flight_holds_off_forget_so_its_images_are_not_swept(tmp_path, monkeypatch, capsys):
    import pipeline.labels.imports as imports

    cfg, root, shas, _ = _root(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    lines = ["file,label"]
    for i in range(3):
        (src / f"f{i}.jpg").write_bytes(noise_jpeg(64, 64, 60 + i))
        lines.append(f"f{i}.jpg,{i % 2}")
    (src / "set.csv").write_text("\n".join(lines) + "\n")
    stored, go = _paused(monkeypatch, imports, "add_faces")  # its images are stored, no row names them yet
    argv = ["labels", "import-classes", "--task", "probe", "--csv", str(src / "set.csv"), "--images", str(src),
            "--no-detect", "--data-root", cfg.data_root]  # fmt: skip
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(main(argv)))
    t.start()
    try:
        assert stored.wait(60)
        with pytest.raises(StageLockedError, match="already running"):
            forget(cfg, "user", "o1")
    finally:
        go.set()
        t.join(120)
    assert rc == [0]
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 3 and summary["ok"] == 3
    labelled = root.read("labels/probe").to_pylist()
    assert len(labelled) == 3 and all(root.has_image(r["image_sha256"]) for r in labelled)
    forget(cfg, "user", "o1")  # afterwards the import's images are referenced: none is swept
    assert all(root.has_image(r["image_sha256"]) for r in labelled)


def test_a_report_leaves_out_opted_out_faces_and_rechecks_the_list_before_it_writes(tmp_path, monkeypatch):
    import pipeline.report.html as report_html

    cfg, root, shas, crops = _root(tmp_path)
    forget(cfg, "image", shas[1])  # opted out ...
    root.write_part("faces", [{"image_sha256": shas[1], "kept": True, "crop_jpeg": crops[shas[1]], "recipe": RECIPE}])
    root.write_part("scores/dt=2026-01-02", _scores(shas[1:2]))  # ... yet a late writer's rows name it again
    page = Path(write_report("m1", cfg)).read_text()
    listed = root.read_json(root.path("models", "m1", "report.images.json"))["image_sha256"]
    assert shas[1] not in listed and base64.b64encode(crops[shas[1]]).decode() not in page
    assert shas[0] in listed and base64.b64encode(crops[shas[0]]).decode() in page
    # a face that joins the list while the page is built (as a writer that ignored the lock would do): not written
    key = os.environ[KEY_ENV].encode()
    real = report_html._metrics_table

    def list_while_building(metrics):
        root.write_part("optout", [{"kind": "image", "subject_hash": subject_hash("image", shas[0], key),
                                    "scheme": "hmac-sha256", "added_at": now()}])  # fmt: skip
        return real(metrics)

    monkeypatch.setattr(report_html, "_metrics_table", list_while_building)
    os.remove(root.path("models", "m1", "report.html"))
    with pytest.raises(OptedOutFaceError, match="opt-out list"):
        write_report("m1", cfg)
    assert not root.exists("models", "m1", "report.html") and OptOut(root).blocks("image", shas[0])
