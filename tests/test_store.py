"""The data root: atomic parts, keys already done, whole-dataset replace, the same on local disk and on S3."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipeline.locks import hold
from pipeline.store import FACES, DataRoot, MissingDatasetError, sha256_bytes, to_table


def _roots(tmp_path, s3_server, name):
    return [DataRoot(str(tmp_path / name)), DataRoot(s3_server(f"store-{name}"))]


@pytest.mark.parametrize("where", [0, 1], ids=["local", "s3"])
def test_parts_keys_and_images(tmp_path, s3_server, where):
    root = _roots(tmp_path, s3_server, f"a{where}")[where]
    assert not root.has("faces") and root.done_keys("faces") == set()
    with pytest.raises(MissingDatasetError, match="'faces'.*run the 'faces' stage"):
        root.read("faces")
    sha = root.put_image(b"\xff\xd8 not really a jpeg")
    assert sha == sha256_bytes(b"\xff\xd8 not really a jpeg") and root.has_image(sha)
    assert root.put_image(b"\xff\xd8 not really a jpeg") == sha  # stored once
    assert root.get_image(sha) == b"\xff\xd8 not really a jpeg"
    root.write_part("faces", [{"image_sha256": "a", "n_faces": 1, "kept": True}])
    root.write_part("faces", [{"image_sha256": "b", "n_faces": 0, "kept": False, "reason": "no_face"}])
    assert root.write_part("faces", []) is None
    assert root.done_keys("faces") == {"a", "b"}
    t = root.read("faces")
    assert t.schema == FACES and sorted(t.column("image_sha256").to_pylist()) == ["a", "b"]
    assert len(root.part_files("faces")) == 2
    root.write_part("posts", [{"site": "s", "item_id": "1"}, {"site": "s", "item_id": "2"}])
    assert root.done_keys("posts") == {("s", "1"), ("s", "2")}


@pytest.mark.parametrize("where", [0, 1], ids=["local", "s3"])
def test_replace_is_whole_and_streams(tmp_path, s3_server, where):
    root = _roots(tmp_path, s3_server, f"b{where}")[where]
    root.replace("labels/selfie", [to_table([{"item_id": "x", "status": "ok"}], root.schema("labels/selfie"))])
    batches = (to_table([{"item_id": f"{i}-{j}"} for j in range(10)], root.schema("labels/selfie")) for i in range(5))
    root.replace("labels/selfie", batches)
    ids = root.read("labels/selfie", columns=["item_id"]).column(0).to_pylist()
    assert len(ids) == 50 and "x" not in ids
    assert len(root.part_files("labels/selfie")) == 1


def test_unknown_column_is_an_error(tmp_path):
    root = DataRoot(str(tmp_path))
    with pytest.raises(ValueError, match="not in the schema"):
        root.write_part("faces", [{"image_sha256": "a", "colour": "red"}])


def test_killed_write_leaves_nothing_visible(tmp_path, monkeypatch):
    """A crash while the Parquet file is written leaves only a temp file, which readers ignore and clean_tmp removes."""
    root = DataRoot(str(tmp_path))
    root.write_part("faces", [{"image_sha256": "a"}])

    import pipeline.store as store

    def dies_mid_write(table, where, filesystem=None, **kw):
        with filesystem.open_output_stream(where) as out:
            out.write(b"PAR1 half a file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(store.pq, "write_table", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        root.write_part("faces", [{"image_sha256": "b"}])
    monkeypatch.undo()
    assert root.done_keys("faces") == {"a"}
    assert root.clean_tmp("faces") == 1
    for p in root.part_files("faces"):
        pq.read_table(p)  # every visible file is whole


def test_scores_partitions_read_as_columns(tmp_path):
    import datetime as dt

    root = DataRoot(str(tmp_path))
    for day in (dt.date(2026, 11, 1), dt.date(2026, 11, 2)):
        root.write_part(root.scores_partition(day), [{"image_sha256": f"s{day.day}", "model_id": "m", "score": 0.5}])
    t = root.read("scores")
    assert sorted(t.column("dt").to_pylist()) == ["2026-11-01", "2026-11-02"]
    assert root.done_keys("scores") == {("s1", "m"), ("s2", "m")}


def _faces_root(tmp_path, n_parts=3):
    root = DataRoot(str(tmp_path / "data"))
    paths = [root.write_part("faces", [{"image_sha256": f"p{i}-{j}"} for j in range(200)]) for i in range(n_parts)]
    return root, paths


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_torn_part_is_quarantined_and_the_rest_read(tmp_path, caplog, damage):
    """A part renamed into place but torn by a crash (half its bytes, or none): readers move it to _quarantine/
    with a logged reason and return every other row, instead of an ArrowInvalid for the whole dataset."""
    import logging
    import os

    root, paths = _faces_root(tmp_path)
    torn = paths[1]
    size = os.path.getsize(torn)
    with open(torn, "r+b") as f:
        f.truncate(size // 2 if damage == "truncated" else 0)
    with caplog.at_level(logging.WARNING, logger="facerank"):
        t = root.read("faces", columns=["image_sha256"])
    ids = set(t.column(0).to_pylist())
    assert len(ids) == 400 and not any(i.startswith("p1-") for i in ids)
    moved = tmp_path / "data" / "faces" / "_quarantine" / os.path.basename(torn)
    assert moved.exists() and not os.path.exists(torn)
    assert any(
        "unreadable part file" in r.getMessage() and os.path.basename(torn) in r.getMessage() for r in caplog.records
    )
    assert root.done_keys("faces") == ids and len(root.part_files("faces")) == 2


def test_corrupt_data_inside_a_whole_footer_is_quarantined_on_read(tmp_path, caplog):
    """Zeroed bytes in the middle of a part (its footer intact): the read fails, every part is checked, the bad one
    is set aside and the read is done again without it."""
    import logging
    import os

    root, paths = _faces_root(tmp_path)
    bad = paths[0]
    data = bytearray(open(bad, "rb").read())
    data[8:408] = bytes(400)
    open(bad, "wb").write(bytes(data))
    with caplog.at_level(logging.WARNING, logger="facerank"):
        ids = root.read("faces", columns=["image_sha256"]).column(0).to_pylist()
    assert len(ids) == 400 and not any(i.startswith("p0-") for i in ids)
    assert (tmp_path / "data" / "faces" / "_quarantine" / os.path.basename(bad)).exists()
    assert any("unreadable part file" in r.getMessage() for r in caplog.records)


def test_local_writes_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    import os

    synced: list[str] = []
    real = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    root = DataRoot(str(tmp_path / "data"))
    final = root.write_part("faces", [{"image_sha256": "a"}])
    assert any("/faces/_tmp/" in p for p in synced)  # the file, under its temp name, before the rename
    assert synced[-1] == os.path.dirname(final)  # the folder, after it
    synced.clear()
    root.write_bytes_atomic(root.image_path("ab" * 32), b"bytes")  # its folder made on the way
    assert any("/.tmp-" in p for p in synced) and synced[-1] == os.path.dirname(root.image_path("ab" * 32))
    assert (
        os.listdir(os.path.dirname(root.image_path("ab" * 32))) == ["ab" * 32] and root.get_image("ab" * 32) == b"bytes"
    )
    monkeypatch.setattr(DataRoot, "fence", lambda self: (_ for _ in ()).throw(RuntimeError("lock lost")))
    with pytest.raises(RuntimeError):  # a write stopped before its rename leaves no temp file behind
        root.write_bytes_atomic(root.image_path("ac" * 32), b"bytes")
    assert os.listdir(os.path.dirname(root.image_path("ac" * 32))) == []


def test_each_stage_cleans_only_its_own_temporaries_when_it_takes_its_lock(tmp_path):
    """Leftovers of killed runs in faces/_tmp and labels/<task>/_tmp are gone once the stage holds its lock;
    another stage's _tmp/ is untouched (it may be a live run's part)."""
    root = DataRoot(str(tmp_path / "data"))
    left = {
        ds: tmp_path / "data" / ds / "_tmp" / "part-left.parquet"
        for ds in ("faces", "labels/selfie", "labels/department", "posts", "scores/dt=2026-01-02")
    }
    for p in left.values():
        p.parent.mkdir(parents=True)
        p.write_bytes(b"PAR1 half of a part with a face in it")
    with hold(root, "faces", ttl_s=30, heartbeat_s=5, clean_temporaries=True):
        assert not left["faces"].exists()
        assert all(p.exists() for ds, p in left.items() if ds != "faces")
    with hold(root, "labels", ttl_s=30, heartbeat_s=5, clean_temporaries=True):
        assert not left["labels/selfie"].exists() and not left["labels/department"].exists()
    with hold(root, "score", ttl_s=30, heartbeat_s=5):  # forget's way: it reads the temporaries itself
        assert left["scores/dt=2026-01-02"].exists()
    with hold(root, "score", ttl_s=30, heartbeat_s=5, clean_temporaries=True):
        assert not left["scores/dt=2026-01-02"].exists()
    assert left["posts"].exists()  # the scrape stage's, never started here


def test_every_stage_run_is_wrapped_in_its_lock():
    """Each stage's run(cfg) is entered through ``stage_entry`` (its lock, log lines and Ray) in
    ``pipeline/<stage>/stage.py`` (checked in the source: importing them all would load torch)."""
    import ast
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "pipeline"
    for stage in ("scrape", "faces", "labels", "train", "score"):
        tree = ast.parse((pkg / stage / "stage.py").read_text())
        run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
        names = [(d.func.id, d.args[0].value) for d in run.decorator_list if isinstance(d, ast.Call)]
        assert ("stage_entry", stage) in names, stage


def test_stage_entry_holds_the_lock_logs_and_refuses_a_second_run(tmp_path, caplog):
    """``stage_entry``: the body runs under the stage's lock (a second holder is refused), once per call."""
    import logging
    import threading

    from pipeline.config import load_config
    from pipeline.locks import StageLockedError, stage_lock
    from pipeline.runtime import stage_entry

    cfg = load_config(None, overrides={"data_root": str(tmp_path / "data")})
    seen = []

    @stage_entry("labels", uses_ray=False)
    def run(cfg, *, note: str):
        seen.append(note)
        other: list[BaseException] = []

        def second():
            try:
                with stage_lock(cfg, "labels"):
                    pass
            except StageLockedError as e:
                other.append(e)

        t = threading.Thread(target=second)
        t.start()
        t.join(30)
        assert other, "a second holder got the lock while the stage ran"
        return {"ok": True}

    with caplog.at_level(logging.INFO, logger="facerank"):
        assert run(cfg, note="x") == {"ok": True}
    assert seen == ["x"]
    assert "stage labels: start" in caplog.text and "stage labels: done" in caplog.text
    with stage_lock(cfg, "labels"):  # released afterwards
        pass


def test_cli_prints_one_line_for_unreadable_parquet(tmp_path, monkeypatch, capsys):
    import pyarrow as pa

    from pipeline import cli

    def torn(args):
        raise pa.ArrowInvalid("Traceback (most recent call last):\n  ...\nParquet magic bytes not found in footer.")

    monkeypatch.setattr(cli, "dispatch", torn)
    code = cli.main(["forget", "--image", "ab" * 32, "--data-root", str(tmp_path)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == cli.EXIT_FAILED and len(err) == 1
    assert err[0] == f"error: unreadable data: Parquet magic bytes not found in footer. (data root: {tmp_path})"


def test_posts_parts_written_before_the_reply_quote_reaction_columns_read_them_as_null(tmp_path):
    """A data root from before ``replies``/``quotes``/``reactions`` reads, refreshes and grows without a migration."""
    import os

    import pyarrow as pa

    from pipeline.scrape.feeds.refresh import rewrite_rows
    from pipeline.store import POSTS, now

    root = DataRoot(str(tmp_path))
    new_cols = ("replies", "quotes", "reactions")
    old = pa.schema([f for f in POSTS if f.name not in new_cols])
    os.makedirs(root.path("posts"), exist_ok=True)
    rows = [{"site": "s", "item_id": i, "likes": 1, "status": "ok"} for i in ("1", "2")]
    pq.write_table(pa.Table.from_pylist(rows, schema=old), os.path.join(root.path("posts"), "part-old.parquet"))
    root.write_part("posts", [{"site": "s", "item_id": "3", "replies": 4, "quotes": 1, "reactions": '{"a":2}'}])
    got = {r["item_id"]: r for r in root.read("posts").to_pylist()}
    assert root.read("posts").schema == POSTS
    assert [got["1"][c] for c in new_cols] == [None, None, None]
    assert [got["3"][c] for c in new_cols] == [4, 1, '{"a":2}']
    assert rewrite_rows(root, "s", {"2": {"likes": 9, "replies": 3}}, now()) == 1  # a count refresh of an old part
    got = {r["item_id"]: r for r in root.read("posts").to_pylist()}
    assert got["2"]["likes"] == 9 and got["2"]["replies"] == 3 and got["1"]["replies"] is None
