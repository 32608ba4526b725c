"""What the demo sites show: users, selfie posts (with their image specs and likes), flaky-site posts, staff.

Everything is drawn from numpy generators seeded by ``(seed, n_posts)`` (posts), ``seed`` (flaky site) and
``(seed, staff_per_department)`` (staff), so the same arguments always give the same sites. Building the content
draws numbers only (milliseconds); images are rendered later, on request, by :mod:`pipeline.demo.images`.

Example::

    from pipeline.demo.content import build_content
    c = build_content(n_posts=240, staff_per_department=12, seed=0)
    c.posts[0].id, c.posts[0].likes, c.posts[0].quality
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np
import pyarrow as pa

from pipeline.demo import images as im

FEED_TAG = "selfie"
FLAKY_TAG = "me"
FLAKY_PAGES, FLAKY_PAGE_SIZE = 3, 20
YOUNG_FRACTION = 0.10
YOUNG_AGE_DAYS = (1.0, 25.0)
OLD_AGE_DAYS = (35.0, 365.0)
FOLLOWERS_MEDIAN, FOLLOWERS_SIGMA, FOLLOWERS_MIN = 1500.0, 1.1, 100
EXTRA_TAGS = ("me", "smile", "weekend", "summer", "friends", "nofilter", "portrait", "happy", "travel", "love")
# fraction of posts of each special kind (at least one each); the rest are plain people photos
KIND_FRACTIONS = {"private": 0.02, "noai": 0.02, "truncated": 0.01, "html": 0.01, "no_person": 0.08}
KINDS = ("person", *KIND_FRACTIONS)

ACADEMIC_ROLES = ("Professor", "Associate Professor", "Lecturer", "Postdoc", "PhD student")
ACADEMIC_WEIGHTS = (0.2, 0.2, 0.2, 0.15, 0.25)
NON_ACADEMIC_ROLES = ("Secretary", "Department Administrator")
DEPARTMENT_NAMES = {
    "cs": "Computer Science",
    "econ": "Economics",
    "german": "German Studies",
    "mech": "Mechanical Engineering",
}
LAYOUTS = {"cs": "cards", "econ": "cards", "german": "table", "mech": "table"}
FIRST_NAMES = (
    "Ada Alan Anna Ben Carla Chen David Elena Emil Eva Farah Felix Grace Hana Ines Ivan Jana Jonas Kai Lara "
    "Lena Luis Maja Marco Mia Nadia Noah Omar Paula Petra Rosa Sami Sara Tomas Ulla Vera Wei Yara Yuki Zoe"
).split()
LAST_NAMES = (
    "Abbott Berger Costa Dietrich Ek Fischer Garcia Hoffmann Ito Jansen Keller Lund Meyer Novak Olsen Patel "
    "Quinn Richter Silva Tanaka Unger Vogel Weber Xu Young Zimmer Brandt Horvat Kowalski Moreau"
).split()


@dataclass(frozen=True)
class Post:
    """One feed post. ``image`` renders its picture; ``kind`` says how the sites serve it (see KINDS)."""

    id: str
    user_id: str
    followers: int
    likes: int
    tags: tuple[str, ...]
    age_days: float
    kind: str
    image: im.FaceSpec | im.SceneSpec

    @property
    def quality(self) -> float:
        return self.image.quality

    def posted_at(self, anchor: datetime) -> str:
        """ISO time ``age_days`` before ``anchor``, like ``2026-09-01T12:00:00Z``."""
        return (anchor - timedelta(days=self.age_days)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class StaffMember:
    id: str
    department: str
    name: str
    role: str
    photo: im.StaffSpec


@dataclass
class DemoContent:
    """All sites' content. ``posts`` (main feed, by id), ``flaky_posts``, ``staff[dept]`` (page order)."""

    posts: list[Post]
    flaky_posts: list[Post]
    staff: dict[str, list[StaffMember]]
    post_by_id: dict[str, Post] = field(default_factory=dict)
    staff_by_id: dict[str, StaffMember] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.post_by_id = {p.id: p for p in self.posts + self.flaky_posts}
        self.staff_by_id = {m.id: m for ms in self.staff.values() for m in ms}


def day_anchor(now: datetime | None = None) -> datetime:
    """The time posts' ages count back from: the start of the current UTC day (stable for a whole day)."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _counts(n: int) -> dict[str, int]:
    """How many posts of each special kind (at least one each once the feed has 20 posts)."""
    return {k: max(1, round(f * n)) for k, f in KIND_FRACTIONS.items()} if n >= 20 else {}


def _face_spec(rng: np.random.Generator) -> im.FaceSpec:
    width = int(rng.integers(240, 401))
    height = int(round(width * rng.uniform(1.0, 1.25)))
    return im.FaceSpec(
        face=im.USABLE_FACES[int(rng.integers(0, len(im.USABLE_FACES)))],
        brightness=round(float(rng.uniform(*im.BRIGHTNESS_RANGE)), 4),
        share=round(float(rng.uniform(*im.SHARE_RANGE)), 4),
        border=bool(rng.random() < im.BORDER_P),
        flip=bool(rng.random() < 0.5),
        width=width,
        height=height,
        dx=round(float(rng.uniform(-0.8, 0.8)), 3),
        dy=round(float(rng.uniform(-0.8, 0.6)), 3),
        color_a=tuple(int(v) for v in rng.integers(60, 200, 3)),
        color_b=tuple(int(v) for v in rng.integers(60, 200, 3)),
        angle=round(float(rng.uniform(0, 2 * math.pi)), 3),
    )


def _scene_spec(rng: np.random.Generator) -> im.SceneSpec:
    return im.SceneSpec(
        scene=im.SCENES[int(rng.integers(0, len(im.SCENES)))],
        x0=round(float(rng.random()), 3),
        y0=round(float(rng.random()), 3),
        frac=round(float(rng.uniform(0.55, 1.0)), 3),
        long_side=int(rng.integers(240, 401)),
        flip=bool(rng.random() < 0.5),
        brightness=round(float(rng.random()), 4),
        border=bool(rng.random() < im.BORDER_P),
    )


def _likes(rng: np.random.Generator, followers: int, q: float, age_days: float) -> int:
    noise = math.exp(float(rng.normal(0.0, im.LIKES_NOISE_SIGMA)))
    settled = min(1.0, age_days / 30.0)  # young posts have not collected their likes yet
    return int(round(followers * im.likes_rate(q) * noise * settled))


def _tags(rng: np.random.Generator, first: str) -> tuple[str, ...]:
    n = int(rng.integers(1, 7))
    pool = [t for t in EXTRA_TAGS if t != first]
    extra = rng.choice(len(pool), size=n - 1, replace=False) if n > 1 else []
    return (first, *(pool[int(i)] for i in extra))


def _followers(rng: np.random.Generator, n: int) -> np.ndarray:
    f = np.exp(rng.normal(math.log(FOLLOWERS_MEDIAN), FOLLOWERS_SIGMA, n))
    return np.maximum(FOLLOWERS_MIN, np.round(f)).astype(int)


def build_posts(n_posts: int, seed: int) -> list[Post]:
    """The main feed's posts ``p00001..``: users, kinds, ages, image specs and likes."""
    rng = np.random.default_rng([seed, n_posts, 1])
    n_users = max(4, n_posts // 3)
    followers = _followers(rng, n_users)
    kinds = np.array(["person"] * n_posts, dtype=object)
    order = rng.permutation(n_posts)
    at = 0
    for kind, c in _counts(n_posts).items():
        kinds[order[at : at + c]] = kind
        at += c
    young = np.zeros(n_posts, bool)
    young[rng.permutation(n_posts)[: max(1, round(YOUNG_FRACTION * n_posts))]] = True
    posts = []
    for i in range(n_posts):
        u = int(rng.integers(0, n_users))
        age = float(rng.uniform(*(YOUNG_AGE_DAYS if young[i] else OLD_AGE_DAYS)))
        spec = _scene_spec(rng) if kinds[i] == "no_person" else _face_spec(rng)
        posts.append(
            Post(
                id=f"p{i + 1:05d}",
                user_id=f"u{u + 1:04d}",
                followers=int(followers[u]),
                likes=_likes(rng, int(followers[u]), spec.quality, age),
                tags=_tags(rng, FEED_TAG),
                age_days=round(age, 5),
                kind=str(kinds[i]),
                image=spec,
            )
        )
    return posts


def build_flaky_posts(seed: int) -> list[Post]:
    """The flaky site's 60 posts ``f0001..`` (tag ``me``): all people photos, all older than 30 days."""
    rng = np.random.default_rng([seed, 2])
    n = FLAKY_PAGES * FLAKY_PAGE_SIZE
    followers = _followers(rng, 20)
    posts = []
    for i in range(n):
        u = int(rng.integers(0, len(followers)))
        age = float(rng.uniform(*OLD_AGE_DAYS))
        spec = _face_spec(rng)
        posts.append(
            Post(
                id=f"f{i + 1:04d}",
                user_id=f"fu{u + 1:03d}",
                followers=int(followers[u]),
                likes=_likes(rng, int(followers[u]), spec.quality, age),
                tags=_tags(rng, FLAKY_TAG),
                age_days=round(age, 5),
                kind="person",
                image=spec,
            )
        )
    return posts


def build_staff(staff_per_department: int, seed: int) -> dict[str, list[StaffMember]]:
    """Staff of the four departments; every person has their own base face while there are enough faces."""
    rng = np.random.default_rng([seed, staff_per_department, 3])
    n_total = staff_per_department * len(im.DEPARTMENTS)
    n_faces = len(im.USABLE_FACES)
    faces = [im.USABLE_FACES[int(i)] for _ in range(n_total // n_faces + 1) for i in rng.permutation(n_faces)]
    names = rng.permutation(len(FIRST_NAMES) * len(LAST_NAMES))
    out: dict[str, list[StaffMember]] = {}
    k = 0
    for dept in im.DEPARTMENTS:
        n_admin = 0 if staff_per_department < 4 else (1 if staff_per_department < 10 else 2)
        admin_at = set(rng.choice(staff_per_department, size=n_admin, replace=False).tolist())
        admin_roles = iter(NON_ACADEMIC_ROLES)
        members = []
        for i in range(staff_per_department):
            nm = int(names[k % len(names)])
            name = f"{FIRST_NAMES[nm // len(LAST_NAMES)]} {LAST_NAMES[nm % len(LAST_NAMES)]}"
            if i in admin_at:
                role = next(admin_roles)
            else:
                role = ACADEMIC_ROLES[int(rng.choice(len(ACADEMIC_ROLES), p=ACADEMIC_WEIGHTS))]
            photo = im.StaffSpec(
                face=faces[k],
                department=dept,
                flip=bool(rng.random() < 0.5),
                brightness=round(float(rng.uniform(0.45, 0.65)), 4),
                share=round(float(rng.uniform(0.38, 0.5)), 4),
                size=int(rng.integers(220, 281)),
                dx=round(float(rng.uniform(-0.5, 0.5)), 3),
                dy=round(float(rng.uniform(-0.6, 0.2)), 3),
            )
            members.append(StaffMember(f"{dept}-{i + 1:03d}", dept, name, role, photo))
            k += 1
        out[dept] = members
    return out


@lru_cache(maxsize=8)
def build_content(n_posts: int = 700, staff_per_department: int = 24, seed: int = 0) -> DemoContent:
    """All sites' content for these arguments (cached)."""
    if n_posts < 1 or staff_per_department < 1:
        raise ValueError("n_posts and staff_per_department must be >= 1")
    return DemoContent(build_posts(n_posts, seed), build_flaky_posts(seed), build_staff(staff_per_department, seed))


def truth(n_posts: int = 700, seed: int = 0) -> pa.Table:
    """The hidden quality of every post on the demo feeds (main feed, then the flaky site).

    Columns: ``item_id`` (post id), ``quality`` (q in [0, 1]), ``image_kind`` (one of :data:`KINDS`).
    """
    posts = build_posts(n_posts, seed) + build_flaky_posts(seed)
    return pa.table(
        {
            "item_id": pa.array([p.id for p in posts], pa.string()),
            "quality": pa.array([float(p.quality) for p in posts], pa.float64()),
            "image_kind": pa.array([p.kind for p in posts], pa.string()),
        }
    )
