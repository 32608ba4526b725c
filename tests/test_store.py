"""The data root: atomic parts, keys already done, whole-dataset replace, the same on local disk and on S3."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

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
