"""Score-stage throughput: the Ray Data scorer (``pipeline.score.run``) against a plain PyTorch loop.

Both score the same N face crops with the same exported model (resnet18 at 96 px, random weights: speed does not
depend on them) and the same batch size. Ours: the whole stage over a data root whose ``faces`` rows hold the
crops (so face detection is reused, as in production), Parquet parts written included. Plain: a DataLoader that
decodes the same JPEG crops, the model's forward pass, the same percentile lookup, results kept in memory.
Then (``--rss``) peak memory of our stage at each image count asked for (2,000 and 20,000: ten times apart), each
in a child process whose whole tree (driver, raylet, GCS, dashboard, workers, actors) is sampled every 0.2 s: the
driver's own peak RSS (its high-water mark, which the child prints), the Ray workers' peak RSS summed (the scoring
actor, read tasks, Ray Data's helper actors: the ``ray::`` processes), as ``bench_scrape.py`` reports them, and the
sums over the tree of RSS (shared pages such as the object store counted once per process mapping them) and of PSS
(shared pages split: the real footprint); and the same for a rerun that finds nothing to score (Ray's fixed
baseline). Streaming keeps the peaks flat in the image count.

    python benchmarks/bench_score.py [--n 20000] [--batch 32] [--device cpu|cuda] [--bf16] [--plain-optimised]
    python benchmarks/bench_score.py --n 0 --rss 2000,20000     # memory runs only

The default run (ours and the plain loop, 20,000 images) takes about 3 minutes on the 2-core development machine;
the extra rows (``--plain-optimised``: the plain loop with our optimised model; ``--bf16``; ``--rss``: the memory
runs, several minutes) are asked for.

Also the ceiling: the same model's forward pass alone on ready tensors, run as our scoring actor runs it (the
stage's batch size, its threads laid out as for the default ``score.calls_per_actor``: on two cores two one-thread
passes side by side; :func:`forward_ceiling`), and ours as a share of it. Prints a table, then one JSON line:
{"bench": "score", "ours": …, "peer": …, "ratio": ours/plain, "unit": "images/s", "ceiling": …, "of_ceiling":
ours/ceiling, "ceiling_layout": …, "driver_rss_mb": {images: MiB}, "workers_rss_mb": {images: MiB}, …}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import posixpath
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_root(path: str, n: int, backbone: str = "resnet18", image_size: int = 96, part_rows: int = 500) -> str:
    """A data root with n posts rows, n faces rows (112 px JPEG crops) and one exported model.

    The faces rows are written in part files of ``part_rows`` (500: what the face stage writes, ``faces.part_rows``),
    so that 20,000 images are more files of the same size, not bigger files.
    """
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.config import TrainConfig, load_config
    from pipeline.faces.recipe import CropRecipe
    from pipeline.model.backbones import backbone as backbone_record
    from pipeline.model.meta import ModelMeta, write_model_meta
    from pipeline.model.network import build_model
    from pipeline.store import DataRoot, now

    root = DataRoot(path)
    # the crops are recorded as made by the default faces settings, and the model as trained on such crops: the
    # scorer (default config too) reuses every faces row, as in production
    recipe = CropRecipe.of(load_config(None).faces, detect=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(112, 112, 3), dtype=np.uint8)
    chunk = part_rows
    for start in range(0, n, chunk):
        posts, faces = [], []
        for i in range(start, min(n, start + chunk)):
            img = np.roll(base, i % 97, axis=0) ^ np.uint8(i % 251)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=85)
            sha = f"{i:064x}"
            posts.append({"site": "bench", "item_id": str(i), "status": "ok", "image_sha256": sha})
            faces.append(
                {
                    "image_sha256": sha,
                    "n_faces": 1,
                    "kept": True,
                    "crop_jpeg": buf.getvalue(),
                    "processed_at": now(),
                    "recipe": recipe.to_json(),
                }  # fmt: skip
            )
        root.write_part("posts", posts)
        root.write_part("faces", faces)
    tc = TrainConfig(task="selfie", backbone=backbone, image_size=image_size)
    model = build_model(tc, 2, load_pretrained=False)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    d = root.model_dir("bench")
    root.write_bytes_atomic(posixpath.join(d, "model.pt"), buf.getvalue())
    root.write_json(posixpath.join(d, "test_scores.json"), [float(x) for x in np.linspace(0, 1, 201)])
    mean, std = backbone_record(backbone).normalisation
    meta = ModelMeta(
        model_id="bench",
        task="selfie",
        kind="binary",
        backbone=backbone,
        num_outputs=2,
        class_names=["bad", "good"],
        image_size=image_size,
        mean=mean,
        std=std,
        train_config=tc.model_dump(),
        inputs={"crop": recipe.to_dict(), "pixels": {"size": image_size, "resize": "bilinear", "colour": "RGB"}},
    )
    write_model_meta(root, d, meta)
    return path


def plain_loop(root_path: str, batch: int, device: str, workers: int, optimize: bool = False) -> tuple[float, int]:
    """DataLoader over the same crops → the same model → scores and percentiles; returns (seconds, n).

    ``optimize``: the same inference optimisation as our scorer (``LoadedModel.optimize_for_inference``), to show
    how much of the difference it explains.
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    from pipeline.imaging import decode_image
    from pipeline.model.loaded import LoadedModel
    from pipeline.store import DataRoot

    t0 = time.perf_counter()  # like ours: reading the crops and loading the model are part of the run
    root = DataRoot(root_path)
    crops = root.read("faces", columns=["crop_jpeg"])["crop_jpeg"].to_pylist()
    m = LoadedModel.load(root.model_dir("bench"), root, device=device)
    if optimize:
        m.optimize_for_inference()
    size, mean, std = m.image_size, m.meta.mean, m.meta.std

    class Crops(Dataset):
        def __len__(self):
            return len(crops)

        def __getitem__(self, i):
            im = decode_image(crops[i]).resize((size, size))
            return torch.from_numpy(np.array(im)).permute(2, 0, 1)

    mean_t = torch.tensor(mean).view(1, 3, 1, 1).to(device)
    std_t = torch.tensor(std).view(1, 3, 1, 1).to(device)
    out = []
    loader = DataLoader(Crops(), batch_size=batch, num_workers=workers)
    with torch.no_grad():
        for x in loader:
            x = (x.to(device).float() / 255.0 - mean_t) / std_t
            p = torch.softmax(m.forward(x).float(), 1)[:, 1].cpu().numpy()  # m.model itself unless optimised
            out.append(m.percentile(p))
    return time.perf_counter() - t0, sum(len(o) for o in out)


def forward_ceiling(root_path: str, batch: int, device: str, threads: int, n: int = 4096) -> tuple[float, str]:
    """Images per second of the exported model's forward pass alone, run as our scoring actor runs it: optimised
    for inference, fp32, batches of ``batch``, ``threads`` torch threads laid out as the actor lays them out for the
    default ``score.calls_per_actor`` (:func:`pipeline.score.inference.pass_layout`: on two cores, two one-thread
    passes side by side, each in its own thread), on ready input tensors: no reading, decoding, resizing,
    normalising or writing. No end-to-end scorer can beat it: the ceiling for ``ours``. Returns (images/s, the
    layout in words). Torch's thread count is restored afterwards (the plain loop runs with torch's default)."""
    import torch

    from pipeline.config import ScoreConfig
    from pipeline.model.loaded import LoadedModel
    from pipeline.score.inference import pass_layout
    from pipeline.store import DataRoot

    per_pass, passes = pass_layout(device, threads, ScoreConfig().calls_per_actor)
    root = DataRoot(root_path)
    m = LoadedModel.load(root.model_dir("bench"), root, device=device)
    m.optimize_for_inference()
    before = torch.get_num_threads()
    torch.set_num_threads(per_pass)
    steps = max(1, n // batch // passes)

    def run(x: torch.Tensor, k: int) -> None:
        with torch.inference_mode():
            for _ in range(k):
                torch.softmax(m.forward(x).float(), 1)

    try:
        xs = [torch.randn(batch, 3, m.image_size, m.image_size, device=device) for _ in range(passes)]
        for k in (3, steps):  # a warm-up (graph specialisation, allocator), then the timed passes
            passes_now = [threading.Thread(target=run, args=(x, k)) for x in xs]
            t0 = time.perf_counter()
            for t in passes_now:
                t.start()
            for t in passes_now:
                t.join()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    layout = f"{passes} pass{'es' if passes > 1 else ''} x {per_pass} thread{'s' if per_pass > 1 else ''}"
    return steps * batch * passes / seconds, layout


def actor_threads(actors: int) -> int:
    """Torch threads of each of our scoring actors: the machine's cores split between them, as the plain loop's
    torch uses every core by default."""
    return max(1, (os.cpu_count() or 1) // actors)


def ours(root_path: str, batch: int, device: str, actors: int, precision: str = "fp32") -> dict:
    """The score stage on the data root; Ray is started before the clock (a job attaches to a running cluster).
    ``precision``: ``score.precision`` (bf16 is an extra row, not the comparison with the peer)."""
    from pipeline import score
    from pipeline.config import load_config
    from pipeline.runtime import init_ray

    cfg = load_config(
        None,
        overrides={
            "data_root": root_path,
            "score.model": "bench",
            "score.batch_size": batch,
            "score.num_actors": actors,
            "score.part_rows": 2048,
            "score.device": device,
            "score.precision": precision,
            "ray.num_cpus": os.cpu_count(),
            "score.num_gpus_per_actor": 1.0 / actors if device == "cuda" else 0.0,
            # torch in the actors uses every core, as the plain loop's torch does by default (split between the
            # actor's side-by-side batches, score.calls_per_actor); the reservations leave a whole CPU for Ray
            # Data's file-listing task
            "score.torch_threads": actor_threads(actors),
            "score.num_cpus_per_actor": min(1.0, max(0.25, ((os.cpu_count() or 1) - 1) / actors)),
        },
    )
    init_ray(cfg)
    t0 = time.perf_counter()
    s = score.run(cfg)
    return {"seconds": time.perf_counter() - t0, "scored": s["scored"]}


def _is_ray_worker(cmdline: str) -> bool:
    """Whether a process is a Ray worker (a task or actor process: the scoring actor, read tasks, Ray Data's helper
    actors, idle pooled workers): titled ``ray::...`` once it runs, ``default_worker.py`` before. Raylet, GCS,
    dashboard and the agents are Ray's own processes, not workers."""
    return cmdline.startswith("ray::") or "default_worker.py" in cmdline


def _tree_memory(pid: int, kinds: dict[int, bool]) -> dict[str, int]:
    """Memory of ``pid`` (the driver) and all its descendants (raylet, GCS, workers) now, in bytes: ``rss`` and
    ``pss`` summed over the tree, ``driver`` (the driver's RSS) and ``workers`` (the RSS summed over the Ray workers;
    ``kinds`` caches which pids are workers).

    RSS counts a shared page (libraries, the plasma object store) once per process that maps it; PSS splits it
    among them, so the PSS sum is the tree's real footprint.
    """
    import psutil

    out = {"rss": 0, "pss": 0, "driver": 0, "workers": 0}
    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return out
    for q in procs:
        try:
            m = q.memory_full_info()  # /proc/<pid>/smaps_rollup on Linux
            out["rss"] += m.rss
            out["pss"] += getattr(m, "pss", m.rss)
            if q.pid == pid:
                out["driver"] = m.rss
                continue
            if q.pid not in kinds:  # a worker keeps being one: its command line is read once
                kinds[q.pid] = _is_ray_worker(" ".join(q.cmdline()))
            if kinds[q.pid]:
                out["workers"] += m.rss
        except psutil.Error:
            pass
    return out


def _own_peak_rss_kib() -> int:
    """This process's peak RSS in KiB: ``VmHWM`` of /proc/self/status, the high-water mark of this program's own
    memory. Not ``ru_maxrss``: Linux carries it over fork and exec, so a child started by a parent that had grown
    (this benchmark's parent holds torch, the model and the plain loop's crops) reports at least the parent's size."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _sampled_child(cmd: list[str]) -> dict:
    """Run ``cmd`` and sample its process tree every 0.2 s: peak RSS and PSS sums, the driver's peak RSS (its own
    high-water mark, which the child prints) and the workers' peak RSS sum (MiB), and seconds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "pss": 0, "driver": 0, "workers": 0}
    t0 = time.perf_counter()
    stop = threading.Event()

    def sample():
        kinds: dict[int, bool] = {}
        while not stop.is_set():
            for k, v in _tree_memory(proc.pid, kinds).items():
                peak[k] = max(peak[k], v)
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"child run failed ({proc.returncode}): {err[-2000:]}")
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    driver = lines[-1]["driver_peak_rss_kib"] * 1024 if lines else peak["driver"]  # the exact peak, else sampled
    return {
        "rss_mib": peak["rss"] / 2**20,
        "pss_mib": peak["pss"] / 2**20,
        "driver_rss_mib": max(driver, peak["driver"]) / 2**20,
        "workers_rss_mib": peak["workers"] / 2**20,
        "seconds": time.perf_counter() - t0,
    }


def peak_memory(n: int, batch: int, device: str, actors: int) -> dict:
    """Our stage on n images in a child process, sampled; then the same command again on the scored root.

    The second run finds nothing to score: its peak is Ray's fixed baseline (driver, raylet, GCS, dashboard,
    idle workers, the key reads) without the data pipeline, so ``peak - baseline`` is what the data costs.
    """
    with tempfile.TemporaryDirectory(prefix="bench-score-") as d:
        make_root(d, n)
        cmd = [sys.executable, __file__, "--child", d, "--batch", str(batch), "--device", device]
        cmd += ["--actors", str(actors)]
        run = _sampled_child(cmd)
        base = _sampled_child(cmd)
    return {
        "n": n,
        "rss_mib": round(run["rss_mib"]),
        "pss_mib": round(run["pss_mib"]),
        "baseline_rss_mib": round(base["rss_mib"]),
        "baseline_pss_mib": round(base["pss_mib"]),
        "driver_rss_mib": round(run["driver_rss_mib"]),
        "workers_rss_mib": round(run["workers_rss_mib"]),
        "baseline_driver_rss_mib": round(base["driver_rss_mib"]),
        "baseline_workers_rss_mib": round(base["workers_rss_mib"]),
        "seconds": round(run["seconds"], 1),
        "images_per_s": round(n / run["seconds"], 1),
        "load": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000, help="images for the throughput comparison (0: skip it)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the plain loop")
    ap.add_argument("--rss", default="", help="image counts for the peak-memory runs, e.g. 2000,20000 ('': none)")
    ap.add_argument("--plain-optimised", action="store_true", help="also time the plain loop with our optimised model")
    ap.add_argument("--bf16", action="store_true", help="also time our stage with score.precision=bf16")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        ours(a.child, a.batch, a.device, a.actors)
        print(json.dumps({"driver_peak_rss_kib": _own_peak_rss_kib()}))
        return
    import torch

    dev_name = torch.cuda.get_device_name(0) if a.device == "cuda" else f"CPU x{os.cpu_count()}"
    load_before = os.getloadavg()[0]
    ours_ips = plain_ips = None
    r: dict = {}
    r16: dict = {}
    plain_n, plain_s, opt_n, opt_s = 0, 0.0, 0, 1.0
    ceiling, layout = None, None
    if a.n > 0:
        with tempfile.TemporaryDirectory(prefix="bench-score-") as d:
            make_root(d, a.n)
            ceiling, layout = forward_ceiling(d, a.batch, a.device, actor_threads(a.actors))
            plain_s, plain_n = plain_loop(d, a.batch, a.device, a.workers)
            if a.plain_optimised:
                opt_s, opt_n = plain_loop(d, a.batch, a.device, a.workers, optimize=True)
            r = ours(d, a.batch, a.device, a.actors)
            if a.bf16:  # the same stage again with score.precision=bf16 (a fresh scores folder: nothing is reused)
                import shutil

                shutil.rmtree(os.path.join(d, "scores"))
                r16 = ours(d, a.batch, a.device, a.actors, precision="bf16")
        ours_ips, plain_ips = r["scored"] / r["seconds"], plain_n / plain_s
    mem = [peak_memory(int(x), a.batch, a.device, a.actors) for x in a.rss.split(",") if x.strip()]
    print(f"score benchmark on {dev_name}, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    if r:
        print(f"n={a.n}, batch={a.batch}")
        print(f"{'':28}{'images':>8}{'seconds':>10}{'images/s':>10}")
        print(f"{'ours (Ray Data stage)':28}{r['scored']:>8}{r['seconds']:>10.1f}{ours_ips:>10.1f}")
        print(f"{'plain PyTorch DataLoader':28}{plain_n:>8}{plain_s:>10.1f}{plain_ips:>10.1f}")
        share = ours_ips / ceiling
        print(
            f"{'forward pass alone (ceiling)':28}{'':>8}{'':>10}{ceiling:>10.1f}  ours = {share:.2f} of it ({layout})"
        )
        if opt_n:
            print(f"{'  same, optimised model':28}{opt_n:>8}{opt_s:>10.1f}{opt_n / opt_s:>10.1f}  (not the peer)")
        if r16:
            ips16 = r16["scored"] / r16["seconds"]
            print(
                f"{'ours, score.precision=bf16':28}{r16['scored']:>8}{r16['seconds']:>10.1f}{ips16:>10.1f}"
                "  (not the peer)"
            )
    growth = {}
    if mem:
        print("peak memory of the child's process tree (driver + Ray), sampled every 0.2 s; MiB")
        print("(driver: its peak RSS; workers: the Ray worker processes' RSS summed; b.: a rerun with nothing to do)")
        head = ["driver", "workers", "RSS sum", "PSS sum", "b.driver", "b.workers", "b.RSS", "b.PSS"]
        print(f"{'images':>8}" + "".join(f"{h:>10}" for h in head) + f"{'seconds':>9}{'img/s':>8}{'load':>6}")
        for m in mem:
            keys = ["driver_rss_mib", "workers_rss_mib", "rss_mib", "pss_mib"]
            keys += [f"baseline_{k}" for k in keys]
            print(
                f"{m['n']:>8}"
                + "".join(f"{m[k]:>10}" for k in keys)
                + f"{m['seconds']:>9}{m['images_per_s']:>8}{m['load']:>6}"
            )
        lo, hi = mem[0], mem[-1]
        if len(mem) > 1:
            for k in ("driver_rss", "workers_rss", "rss", "pss"):  # growth beyond the baseline, largest n over smallest
                d_lo = lo[f"{k}_mib"] - lo[f"baseline_{k}_mib"]
                d_hi = hi[f"{k}_mib"] - hi[f"baseline_{k}_mib"]
                growth[k] = {"total": round(hi[f"{k}_mib"] / lo[f"{k}_mib"], 3) if lo[f"{k}_mib"] else None}
                if d_lo > 0:
                    growth[k]["beyond_baseline"] = round(d_hi / d_lo, 3)
            print(f"{hi['n']} vs {lo['n']} images: {growth}")
    print(
        json.dumps(
            {
                "bench": "score",
                "ours": round(ours_ips, 2) if ours_ips else None,
                "peer": round(plain_ips, 2) if plain_ips else None,
                "ratio": round(ours_ips / plain_ips, 3) if ours_ips else None,
                "unit": "images/s",
                "ceiling": round(ceiling, 2) if ceiling else None,
                "of_ceiling": round(ours_ips / ceiling, 3) if ours_ips and ceiling else None,
                "ceiling_layout": layout,
                "plain_optimised": round(opt_n / opt_s, 2) if opt_n else None,
                "ours_bf16": round(r16["scored"] / r16["seconds"], 2) if r16 else None,
                "n": a.n,
                "batch": a.batch,
                "device": dev_name,
                "load": round(load_before, 1),
                "driver_rss_mb": {str(m["n"]): m["driver_rss_mib"] for m in mem},  # as bench_scrape.py reports
                "workers_rss_mb": {str(m["n"]): m["workers_rss_mib"] for m in mem},
                "peak_memory": mem,
                "memory_growth": growth,
            }
        )
    )


if __name__ == "__main__":
    main()
