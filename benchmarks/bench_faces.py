"""Face-stage throughput and count accuracy vs a plain facenet-pytorch loop, on the same images, same machine.

Images: the ``../shared/faces`` MANIFEST photos (known face counts), ``astronaut()`` and ``camera()`` (one face),
``coffee()``, ``chelsea()``, ``rocket()`` (none), cycled and rescaled to a long side drawn from 480..2000 px, JPEG.

* peer: ``MTCNN(keep_all=True)`` and ``detect`` on each PIL image in one process (the facenet-pytorch README way);
  a face counts when p > 0.9.
* ours: :func:`pipeline.faces.detect_faces` (Ray Data actor pool; bounded detection side, equal-size batches, the
  full-resolution re-check, the crops; the nets run by ``faces.runtime``, the pyramid from ``detect_min_share``)
  with images ordered by size as the stage orders them; ``n_faces``.

Both are timed from JPEG bytes to face counts (ours includes starting its actors). Prints a table, then one JSON
line with ratio = ours / peer images per second.

``--rss N1,N2`` adds memory runs of ours alone: the whole faces stage (:func:`pipeline.faces.stage.run`) in a child
process (its own Ray, so one run's peak does not hide the next) over a fresh data root holding N distinct images
(the same sources and sizes, each made distinct by a JPEG comment segment, stored as the scrape stage stores them,
one ``posts`` row each; made by this process, outside the measured one), sampling the driver's RSS, the sum of the
Ray processes' RSS and a face actor's RSS and unique memory (see :func:`memory_child`). The stage's memory must not
grow with the image count beyond its rows. Run:
``python benchmarks/bench_faces.py [-n 500] [--min-share S] [--runtime auto|torch|onnx] [--rss 500,5000]``
(``-n 0``: the memory runs alone).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.config import FacesConfig  # noqa: E402
from pipeline.faces.detector import resolve_runtime  # noqa: E402
from pipeline.faces.quality import read_manifest  # noqa: E402
from pipeline.imaging import decode_image, to_jpeg  # noqa: E402
from pipeline.testing.replay import with_comment  # noqa: E402


def sources(faces_dir: Path) -> list[tuple[str, Image.Image, int]]:
    """(name, image, true face count) for every source photo."""
    from skimage import data

    out = []
    if (faces_dir / "MANIFEST.csv").exists():
        for path, n in read_manifest(faces_dir):
            out.append((path, decode_image((faces_dir / path).read_bytes()), n))
    for name, n in [("astronaut", 1), ("camera", 1), ("coffee", 0), ("chelsea", 0), ("rocket", 0)]:
        out.append((name, decode_image(to_jpeg(Image.fromarray(getattr(data, name)()), 95)), n))
    return out


def rescaled(img: Image.Image, rng: np.random.Generator, resample: int = Image.BICUBIC) -> Image.Image:
    """``img`` at a random long side in 480..2000 px (one draw of ``rng``)."""
    s = int(rng.integers(480, 2001)) / max(img.size)
    return img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))), resample)


def build_images(n: int, faces_dir: Path, seed: int = 0) -> list[dict]:
    """``n`` JPEG images cycling over the sources, each rescaled to a random long side in 480..2000 px."""
    rng = np.random.default_rng(seed)
    src = sources(faces_dir)
    items = []
    for i in range(n):
        name, img, truth = src[i % len(src)]
        small = rescaled(img, rng)
        jpeg = to_jpeg(small, 90)
        items.append({"name": name, "truth": truth, "jpeg": jpeg, "width": small.size[0], "height": small.size[1]})
    return items


def run_peer(items: list[dict], threshold: float = 0.9) -> tuple[float, list[int]]:
    """facenet-pytorch as its README shows it: one MTCNN, detect per PIL image."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    counts = []
    t0 = time.perf_counter()
    for it in items:
        img = Image.open(io.BytesIO(it["jpeg"])).convert("RGB")
        _, probs = mtcnn.detect(img)
        counts.append(0 if probs is None or probs[0] is None else int(sum(p > threshold for p in probs)))
    return time.perf_counter() - t0, counts


def run_ours(items: list[dict], cfg: FacesConfig) -> tuple[float, list[int]]:
    """The stage's Ray Data path over the same bytes, ordered by size like :func:`pipeline.faces.stage.run`."""
    import pyarrow as pa
    import ray

    from pipeline.faces import detect_faces

    order = sorted(range(len(items)), key=lambda i: (items[i]["width"], items[i]["height"], i))
    table = pa.table(
        {"image_sha256": [str(i) for i in order], "image": pa.array([items[i]["jpeg"] for i in order], pa.binary())}
    )
    blocks = [table.slice(i, cfg.batch_size) for i in range(0, table.num_rows, cfg.batch_size)]
    t0 = time.perf_counter()
    ds = detect_faces(ray.data.from_arrow(blocks), cfg).select_columns(["image_sha256", "n_faces"])
    got = {r["image_sha256"]: r["n_faces"] for r in ds.take_all()}
    secs = time.perf_counter() - t0
    return secs, [int(got[str(i)]) for i in range(len(items))]


def distinct_copies(items: list[dict], n: int) -> Iterator[tuple[bytes, int, int]]:
    """``n`` (jpeg, width, height), cycling over ``items`` with distinct bytes (a comment segment each)."""
    for i in range(n):
        it = items[i % len(items)]
        yield with_comment(it["jpeg"], f"facerank-bench-{i}"), it["width"], it["height"]


def make_root(path: str, n: int, faces_dir: str) -> None:
    """A data root holding ``n`` distinct stored images and one ``posts`` row (status ok) each."""
    from pipeline.store import DataRoot, now

    root, rows = DataRoot(path), []
    for i, (jpeg, w, h) in enumerate(distinct_copies(build_images(min(n, 200), Path(faces_dir)), n)):
        rows.append({"site": "bench", "item_id": f"p{i}", "user_id": f"u{i}", "status": "ok",
                     "image_sha256": root.put_image(jpeg), "width": w, "height": h, "scraped_at": now()})  # fmt: skip
        if len(rows) == 1000:
            root.write_part("posts", rows)
            rows = []
    if rows:
        root.write_part("posts", rows)


def memory_child(root_path: str, actors: int) -> dict:
    """Child process: the faces stage over ``root_path``; seconds, counts, and peak memory sampled every 0.25 s:
    the driver's RSS, the sum over its Ray's processes (GCS, raylet, workers), a face actor's RSS and unique memory
    (USS: its own pages, not the object store's shared ones), the last also over the run's first and second halves
    and over each tenth of the run (a memory that grows with the images processed shows as later parts above earlier
    ones; the images flow at a steady rate, so a tenth of the run is about a tenth of the images). The USS is taken
    only while all ``actors`` face actors are alive: when one has exited, the pages it shared with the other become
    the survivor's own, and its USS jumps with no allocation at all. Each tenth also splits a face actor's own pages
    by mapping (:func:`own_memory`): the C heap that ``malloc`` grows with ``brk`` (``[heap]``: glibc's main arena,
    whose freed chunks stay mapped until the top of the heap is free) and the anonymous mappings (``[anon]``:
    torch's and numpy's large buffers, the other threads' arenas, Ray's and Arrow's memory), so a growth shows where
    it is; and gives each tenth's median beside its peak: a batch's working copies raise the peak for a moment, a
    memory kept per image raises the median too."""
    import psutil
    import ray

    from pipeline.config import parse_config
    from pipeline.faces.stage import run
    from pipeline.runtime import start_local_ray

    cfg = parse_config({"data_root": root_path, "faces": {"num_actors": actors, "device": "cpu"}}, "bench")
    start_local_ray(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # (t, driver rss, Ray's rss, actor rss, actor uss, actor heap, actor anon)
    samples: list[tuple[float, int, int, int, int, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        procs: dict[int, psutil.Process] = {}
        tick = 0
        while not stop.is_set():
            tot = a_rss = a_uss = a_heap = a_anon = n_actors = 0
            for p in me.children(recursive=True):  # this Ray's processes only (another Ray may run beside it)
                try:
                    p = procs.setdefault(p.pid, p)
                    cmd = " ".join(p.cmdline())
                    rss = p.memory_info().rss
                    tot += rss
                    if "FaceActor" in cmd:
                        n_actors += 1
                        a_rss = max(a_rss, rss)
                        if tick % 4 == 0:  # reading smaps is slower: once a second
                            uss, heap, anon = own_memory(p)
                            a_uss, a_heap, a_anon = max(a_uss, uss), max(a_heap, heap), max(a_anon, anon)
                except (psutil.Error, TypeError, AttributeError):
                    pass
            if n_actors < actors:  # starting or ending: a survivor's USS counts the pages it shared (docstring)
                a_uss = a_heap = a_anon = 0
            samples.append((time.perf_counter(), me.memory_info().rss, tot, a_rss, a_uss, a_heap, a_anon))
            tick += 1
            time.sleep(0.25)

    t0 = time.perf_counter()
    threading.Thread(target=sample, daemon=True).start()
    summary = run(cfg)
    secs = time.perf_counter() - t0
    stop.set()
    ray.shutdown()
    mb = 2**20
    tenths = [[r for r in samples if t0 + secs * k / 10 <= r[0] < t0 + secs * (k + 1) / 10] for k in range(10)]

    def peak(i: int, rows: list) -> int:
        return round(max((r[i] for r in rows), default=0) / mb)

    def median(i: int, rows: list) -> int:  # of the samples that read the smaps (the others hold 0)
        taken = [r[i] for r in rows if r[i]]
        return round(float(np.median(taken)) / mb) if taken else 0

    per_tenth = {
        f"face_actor_{name}_mb_tenths{stat}": [f(i, tenth) for tenth in tenths]
        for i, name in ((4, "uss"), (5, "heap"), (6, "anon"))
        for stat, f in (("", peak), ("_median", median))
    }
    return {
        "n": summary["processed"] + summary["already_done"],
        "seconds": round(secs, 1),
        "processed": summary["processed"],
        "kept": summary["kept"],
        "driver_peak_rss_mb": peak(1, samples),
        "workers_peak_rss_mb": peak(2, samples),
        "face_actor_peak_rss_mb": peak(3, samples),
        "face_actor_peak_uss_mb": peak(4, samples),
        **per_tenth,
        "face_actor_uss_mb_halves": [max(per_tenth["face_actor_uss_mb_tenths"][h : h + 5]) for h in (0, 5)],
    }


def own_memory(p) -> tuple[int, int, int]:
    """A process's own pages (bytes, from its smaps): in all (USS), in the C heap (``[heap]``), in anonymous
    mappings (``[anon]``)."""
    uss = heap = anon = 0
    for m in p.memory_maps(grouped=True):
        own = m.private_clean + m.private_dirty
        uss += own
        if m.path == "[heap]":
            heap += own
        elif m.path == "[anon]":
            anon += own
    return uss, heap, anon


def peak_memory(n: int, faces_dir: str, actors: int) -> dict:
    """A data root of ``n`` images made here, then :func:`memory_child` over it in a fresh process (its own Ray):
    the images' preparation is not in the measured process."""
    with tempfile.TemporaryDirectory(prefix="bench-faces-") as tmp:
        make_root(tmp, n, faces_dir)
        cmd = [sys.executable, __file__, "--memory-child", tmp, "--actors", str(actors)]
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_memory(mem: list[dict]) -> None:
    """The memory runs' table."""
    if mem:
        print("\nthe faces stage alone, peak memory (MB): RSS of the driver, its Ray's processes and a face actor;")
        print("a face actor's unique memory (USS), over the whole run and its first / second half")
        print(f"{'images':>8}{'seconds':>9}{'driver':>8}{'workers':>9}{'actor':>7}{'USS':>6}{'USS halves':>12}")
        for m in mem:
            h1, h2 = m["face_actor_uss_mb_halves"]
            print(
                f"{m['n']:>8}{m['seconds']:>9}{m['driver_peak_rss_mb']:>8}{m['workers_peak_rss_mb']:>9}"
                f"{m['face_actor_peak_rss_mb']:>7}{m['face_actor_peak_uss_mb']:>6}{f'{h1} / {h2}':>12}"
            )
        print("a face actor's own memory (MB, the highest of the face actors) in each tenth of the run, its peak and")
        print("its median: all of it (USS), the C heap ([heap]) and the anonymous mappings ([anon])")
        for m in mem:
            for stat, label in (("", "peak"), ("_median", "median")):
                for name in ("uss", "heap", "anon"):
                    row = m[f"face_actor_{name}_mb_tenths{stat}"]
                    print(f"{m['n']:>8} {label:>6} {name:>4} " + " ".join(f"{x:>5}" for x in row))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--faces-dir", default=str(REPO.parent / "shared" / "faces"))
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--max-side", type=int, default=FacesConfig().max_side)
    ap.add_argument("--batch-size", type=int, default=FacesConfig().batch_size)
    ap.add_argument("--min-share", type=float, default=FacesConfig().detect_min_share)
    ap.add_argument("--runtime", choices=["auto", "torch", "onnx"], default=FacesConfig().runtime)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--rss", default="", help="image counts for the stage's peak-memory runs, e.g. 500,5000")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.actors)))
        return 0
    if args.n == 0:  # the memory runs alone
        mem = [peak_memory(int(x), args.faces_dir, args.actors) for x in args.rss.split(",") if x.strip()]
        print_memory(mem)
        print(
            json.dumps({"bench": "faces", "ours": None, "peer": None, "ratio": None, "unit": "images/s", "memory": mem})
        )
        return 0

    items = build_images(args.n, Path(args.faces_dir))
    truth = [it["truth"] for it in items]
    load0 = os.getloadavg()[0]
    peer_s, peer_counts = (float("nan"), [-1] * len(items)) if args.skip_peer else run_peer(items)

    import ray

    from pipeline.runtime import start_local_ray

    start_local_ray(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = FacesConfig(
        num_actors=args.actors,
        max_side=args.max_side,
        batch_size=args.batch_size,
        device="cpu",
        detect_min_share=args.min_share,
        runtime=args.runtime,
    )
    ours_s, ours_counts = run_ours(items, cfg)
    ray.shutdown()
    load1 = os.getloadavg()[0]

    n = len(items)
    peer_ips, ours_ips = n / peer_s, n / ours_s
    peer_acc = sum(a == b for a, b in zip(peer_counts, truth, strict=True)) / n
    ours_acc = sum(a == b for a, b in zip(ours_counts, truth, strict=True)) / n
    print(f"{n} images, long side 480..2000 px; {os.cpu_count()} CPUs; load avg {load0:.1f} → {load1:.1f}")
    print(f"{'':<44}{'images/s':>10}{'count right':>14}")
    print(f"{'plain MTCNN(keep_all=True).detect loop':<44}{peer_ips:>10.2f}{peer_acc:>14.3f}")
    runtime = resolve_runtime(cfg.runtime, "cpu")
    print(f"{f'ours: Ray Data, {args.actors} actors, max_side {args.max_side}':<44}{ours_ips:>10.2f}{ours_acc:>14.3f}")
    print(f"  nets by {runtime}, detect_min_share {cfg.detect_min_share}")
    for label, counts in (("plain", peer_counts), ("ours", ours_counts)):
        wrong: dict[str, int] = {}
        for it, c in zip(items, counts, strict=True):
            if c != it["truth"]:
                wrong[it["name"]] = wrong.get(it["name"], 0) + 1
        print(f"  {label} wrong by source: {dict(sorted(wrong.items(), key=lambda kv: -kv[1]))}")
    mem = [peak_memory(int(x), args.faces_dir, args.actors) for x in args.rss.split(",") if x.strip()]
    print_memory(mem)
    print(
        json.dumps(
            {
                "bench": "faces",
                "ours": round(ours_ips, 3),
                "peer": None if args.skip_peer else round(peer_ips, 3),
                "ratio": None if args.skip_peer else round(ours_ips / peer_ips, 3),
                "unit": "images/s",
                "n": n,
                "ours_count_accuracy": round(ours_acc, 4),
                "peer_count_accuracy": None if args.skip_peer else round(peer_acc, 4),
                "actors": args.actors,
                "max_side": args.max_side,
                "detect_min_share": cfg.detect_min_share,
                "runtime": runtime,
                "cpus": os.cpu_count(),
                "load_avg": [round(load0, 1), round(load1, 1)],
                **({"memory": mem} if mem else {}),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
