"""Small data roots built directly (no crawl), or copied from another run: the inputs a stage needs, for tests that
run one stage."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterable
from pathlib import Path

from pipeline.store import STATUS_OK, DataRoot


def populate_label_inputs(uri: str, n_posts: int = 16, staff_per_department: int = 3) -> DataRoot:
    """Tiny ``posts``, ``staff`` and ``faces`` datasets (every face kept), enough for the labels stage."""
    root = DataRoot(uri)
    now = dt.datetime.now(dt.UTC)
    posts, staff, faces = [], [], []
    for i in range(n_posts):
        sha = f"{i:064x}"
        posts.append(
            dict(site="demo", item_id=f"p{i}", hashtag="selfie", user_id=f"u{i}", followers=1000 + 37 * i,
                 likes=(i * 7919) % 101, tags=["selfie", "me"][: 1 + i % 2],
                 posted_at=now - dt.timedelta(days=40 + i), scraped_at=now, too_young=False,
                 image_url=f"http://demo.invalid/{i}.jpg", image_sha256=sha, width=200, height=200, status=STATUS_OK)
        )  # fmt: skip
        faces.append(dict(image_sha256=sha, width=200, height=200, n_faces=1, kept=True, face_share=0.3))
    for d, dept in enumerate(["cs", "econ", "german", "mech"]):
        for j in range(staff_per_department):
            sha = f"{1000 + 10 * d + j:064x}"
            staff.append(
                dict(site=f"demo-uni-{dept}", item_id=f"{dept}-{j}", department=dept, name=f"Person {dept} {j}",
                     role="Professor", is_academic=True, page_url="http://demo.invalid/staff.html",
                     image_url=f"http://demo.invalid/{dept}{j}.jpg", image_sha256=sha, width=200, height=200,
                     scraped_at=now, status=STATUS_OK)
            )  # fmt: skip
            faces.append(dict(image_sha256=sha, width=200, height=200, n_faces=1, kept=True, face_share=0.3))
    root.write_part("posts", posts)
    root.write_part("staff", staff)
    root.write_part("faces", faces)
    return root


def copy_datasets(src: Path, dst: Path, names: Iterable[str]) -> None:
    """Copy the folders ``names`` (datasets such as ``posts``, ``images`` or ``models/<run_id>``) of the local data
    root ``src`` into ``dst``, without temporaries or quarantined parts."""
    for name in names:
        shutil.copytree(Path(src) / name, Path(dst) / name, ignore=shutil.ignore_patterns("_tmp", "_quarantine"))
