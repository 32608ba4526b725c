"""Security checks behind docs/security.md: no unsafe deserialisation anywhere in the code, a booby-trapped model file
is refused without running its payload, and stored file names are content hashes whatever the URL says."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("pipeline", "jobs", "benchmarks", "deploy")


def _code_files():
    for d in CODE_DIRS:
        yield from (REPO / d).rglob("*.py")


def test_no_unsafe_deserialisation_in_the_code():
    """Every torch.load passes weights_only=True; YAML only through safe_load; no pickle, marshal, shelve, joblib
    or numpy allow_pickle on data from disk or the network (Ray's own transport is not in our code)."""
    bad = []
    for f in _code_files():
        text = f.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find("\n", text.find(")", m.start()))]
            if "weights_only=True" not in call:
                bad.append(f"{f.relative_to(REPO)}: torch.load without weights_only=True")
        for pat in (
            r"\byaml\.(load|unsafe_load|full_load|load_all)\(",
            r"\bpickle\.loads?\(",
            r"\bcloudpickle\.loads?\(",
            r"\bmarshal\.loads?\(",
            r"\bshelve\.open\(",
            r"\bjoblib\.load\(",
            r"allow_pickle\s*=\s*True",
            r"\bpd\.read_pickle\(",
            r"(?<![\w.])eval\(",
            r"(?<![\w.])exec\(",
        ):
            if re.search(pat, text):
                bad.append(f"{f.relative_to(REPO)}: {pat}")
    assert not bad, bad


class _Payload:
    """Unpickling this would create ``marker`` (a stand-in for any code a hostile model file could run)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_booby_trapped_model_file_is_refused(tmp_path):
    """A model.pt whose pickle calls a function on load: LoadedModel.load refuses it and the payload never runs."""
    import pickle

    import torch

    from helpers.score_model import write_model
    from pipeline.store import DataRoot
    from pipeline.train import LoadedModel

    root = DataRoot(str(tmp_path / "data"))
    d = write_model(root)
    LoadedModel.load(d, root)  # the honest file loads
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(1), "x": _Payload(str(marker))}, buf)
    root.write_bytes_atomic(f"{d}/model.pt", buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="weights_only|Unsupported global"):
        LoadedModel.load(d, root)
    assert not marker.exists()


def test_image_file_names_are_content_hashes_not_urls(tmp_path):
    """put_image names the file by the sha256 of its bytes: nothing from a URL or page reaches the path."""
    import hashlib

    from pipeline.store import DataRoot

    root = DataRoot(str(tmp_path / "data"))
    data = b"../../etc/passwd\x00<img src=x>"
    sha = root.put_image(data)
    assert sha == hashlib.sha256(data).hexdigest()
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert [p.relative_to(tmp_path / "data").as_posix() for p in files] == [f"images/{sha[:2]}/{sha}"]
