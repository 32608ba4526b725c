"""Command line: ``python -m pipeline …`` and the shared entrypoint of every Ray job in ``jobs/``.

Stages::

    python -m pipeline stage scrape|faces|labels|train|score --config configs/demo.yaml [--data-root DIR]
    python -m pipeline all --config configs/demo.yaml          # the five stages in order
    python -m pipeline demo                                    # demo sites on 127.0.0.1 + all five stages

Tools::

    python -m pipeline faces --input DIR --output DIR --size 128        # crops only, like autocrop
    python -m pipeline labels import-scores --images DIR --scores FILE  # SCUT-FBP5500-style scores
    python -m pipeline labels import-classes --task NAME --csv FILE --images DIR | --folders DIR  # classes
    python -m pipeline scrape check-site --config FILE --site NAME [--pages N] [--json]   # try a staff site config
    python -m pipeline scrape check-feed --config FILE --site NAME [--saved F] [--json]   # try a feed site config
    python -m pipeline rate photo.jpg [--model DIR] [--json]
    python -m pipeline best-crop photo.jpg --out best.jpg [--k 24]
    python -m pipeline report --run DATA_ROOT/models/RUN_ID   # the data root is the run's, unless --config says
    python -m pipeline scheduler --config configs/cluster.yaml   # submit the score job on score.schedule
    python -m pipeline privacy init-key --config FILE   # make the opt-out key (once) and record it in the data root
    python -m pipeline forget --user ID [--site SITE] | --site SITE --person ID | --image SHA | --acct USER@HOST
    python -m pipeline retention --config FILE      # drop raw images older than privacy.raw_image_retention_days

Exit codes: 0 success, 2 bad config or arguments (one line on stderr, before any work; also no opt-out key, or
one that is not the key the data root's opt-out list was made with), 3 a missing input
dataset, 4 the stage is locked: another live run of it holds the data root (one line naming the holder, before Ray
starts; also when a run's lock was taken over while it ran, see pipeline/locks.py; `report`, the label imports and
`retention` hold locks that `forget` holds too), 1 any other failure (one line
for an I/O error or unreadable Parquet data).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, load_config

STAGES = ("scrape", "faces", "labels", "train", "score")
EXIT_CONFIG, EXIT_MISSING_INPUT, EXIT_FAILED = 2, 3, 1
EXIT_LOCKED = 4  # another run of the stage holds its lock on the data root


def _stage_fn(name: str) -> Callable[..., dict]:
    """Import a stage's ``run`` lazily: torch and Ray are slow to import and the config check comes first."""
    import importlib

    return importlib.import_module(f"pipeline.{name}").run


def load(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_root", None):
        overrides["data_root"] = args.data_root
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        import yaml

        overrides[key] = yaml.safe_load(value)
    return load_config(args.config, overrides=overrides)


def run_stages(cfg: Config, names: tuple[str, ...] = STAGES, *, opts: dict[str, dict] | None = None) -> dict[str, dict]:
    """Run stages in order; returns each stage's summary. ``opts``: keyword options per stage name.

    Each stage's lock is taken here before Ray starts, so a second run of a stage fails at once with
    :class:`~pipeline.locks.StageLockedError`; the stage's own entry (:func:`pipeline.runtime.stage_entry`)
    re-enters it, logs the stage and starts Ray.
    """
    from pipeline.locks import stage_lock
    from pipeline.runtime import log

    out: dict[str, dict] = {}
    for i, name in enumerate(names, 1):
        with stage_lock(cfg, name):
            log.info("[%d/%d] %s", i, len(names), name)
            out[name] = _stage_fn(name)(cfg, **(opts or {}).get(name, {}))
    return out


def _print_summary(cfg: Config, summaries: dict[str, dict], seconds: float) -> None:
    from pipeline.report.summary import format_summary

    print(format_summary(cfg, summaries, seconds))


def _common(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("--config", required=config_required, help="YAML config (see configs/)")
    p.add_argument("--data-root", help="override data_root (a folder or s3://bucket/prefix)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=2")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("stage", help="run one stage")
    s.add_argument("name", choices=STAGES)
    s.add_argument("--resume", action="store_true", help="train: continue the run named by train.run_id")
    _common(s)
    s.add_argument("--images", help="score: a folder or URI of new images to score")

    a = sub.add_parser("all", help="run the five stages in order")
    _common(a)

    d = sub.add_parser("demo", help="start the demo sites on 127.0.0.1 and run all five stages")
    _common(d, config_required=False)
    d.add_argument("--port", type=int, default=8765)
    d.add_argument("--n-posts", type=int, default=700)

    f = sub.add_parser("faces", help="crop faces from a folder of images")
    f.add_argument("--input", required=True)
    f.add_argument("--output", required=True)
    f.add_argument("--size", type=int, default=128)
    _common(f, config_required=False)

    lab = sub.add_parser("labels", help="label tools")
    lsub = lab.add_subparsers(dest="labels_cmd", required=True)
    imp = lsub.add_parser("import-scores", help="import a scored face data set (SCUT-FBP5500 format or CSV)")
    imp.add_argument("--images", required=True)
    imp.add_argument("--scores", required=True, nargs="+", help="one file per split, or one CSV file,score")
    imp.add_argument("--protocol", choices=["cv5", "split60", "files", "hash"], default=None)
    faces_step = imp.add_mutually_exclusive_group()
    faces_step.add_argument("--detect", dest="detect", action="store_const", const=True, default=None,
                            help="also crop the images' faces into faces/ (MTCNN)")  # fmt: skip
    faces_step.add_argument("--no-detect", dest="detect", action="store_const", const=False,
                            help="also put the images into faces/ as already-cropped faces")  # fmt: skip
    _common(imp, config_required=False)
    ic = lsub.add_parser("import-classes", help="import a labelled face set (CSV or a folder per class)")
    ic.add_argument("--task", help="the label set's name: labels/<task> (default: train.task)")
    ic.add_argument("--csv", help="a CSV with one row per image (use with --images)")
    ic.add_argument("--images", help="the folder the CSV's file names are relative to")
    ic.add_argument("--file-column", help="default: labels.imported.file_column (file)")
    ic.add_argument("--label-column", help="default: labels.imported.label_column (label)")
    ic.add_argument("--person-column", help="splits by person when given (else by image hash)")
    ic.add_argument("--split-column", help="a shipped split (train/val/test), kept as given")
    ic.add_argument("--group-column", help="a group (age band, skin type...) the model card reports accuracy per")
    ic.add_argument("--label-map", help='raw label → class name, e.g. --label-map=-1=female,1=male (with "=": a value '
                    'starting with "-" is not an option then)')  # fmt: skip
    ic.add_argument("--folders", help="an ImageFolder tree: [train|val|test/]<class>/<image>")
    ic.add_argument("--no-detect", dest="detect", action="store_const", const=False, default=None,
                    help="the images are faces already (no MTCNN crop; default: labels.imported.detect)")  # fmt: skip
    _common(ic, config_required=False)

    r = sub.add_parser("rate", help="score one photo")
    r.add_argument("photo")
    r.add_argument("--model", help="a model directory (default: the newest under the data root)")
    r.add_argument("--json", action="store_true")
    _common(r, config_required=False)

    b = sub.add_parser("best-crop", help="find the best-scoring crop of a photo")
    b.add_argument("photo")
    b.add_argument("--out", required=True)
    b.add_argument("--k", type=int, default=24)
    b.add_argument("--model")
    _common(b, config_required=False)

    rep = sub.add_parser("report", help="write the HTML report of a trained model")
    rep.add_argument("--run", required=True, help="a <data root>/models/<run_id> folder (its data root is used)")
    _common(rep, config_required=False)

    fg = sub.add_parser("forget", help="erase a person from every output and add them to the opt-out list")
    g = fg.add_mutually_exclusive_group(required=True)
    g.add_argument("--user", metavar="ID", help="a feed user id (on every site, or only on --site)")
    g.add_argument("--person", metavar="ID", help="a staff person id (or imported-scores person): needs --site")
    g.add_argument("--image", metavar="SHA256", help="one image, by its sha256")
    g.add_argument("--acct", metavar="USER@HOST", help="a fediverse account, through every server it was seen on")
    fg.add_argument("--site", help="the site the id belongs to (one id may name two people on two sites)")
    _common(fg, config_required=False)

    pv = sub.add_parser("privacy", help="privacy tools")
    pvsub = pv.add_subparsers(dest="privacy_cmd", required=True)
    ik = pvsub.add_parser("init-key", help="make the opt-out key when none is given, and record it in the data root")
    adopt = "the opt-out list holds keyed rows from before keys were recorded, and this key made them"
    ik.add_argument("--adopt", action="store_true", help=adopt)
    _common(ik, config_required=False)

    ret = sub.add_parser("retention", help="drop raw images older than privacy.raw_image_retention_days")
    _common(ret, config_required=False)

    sc = sub.add_parser("scrape", help="scrape tools")
    scsub = sc.add_subparsers(dest="scrape_cmd", required=True)
    cs = scsub.add_parser("check-site", help="read a staff site's first page(s) and print what it finds per person")
    cs.add_argument("--config", required=True, help="a config file, or a site file (configs/sites/*.yaml)")
    cs.add_argument("--site", required=True, help="the staff site's name")
    cs.add_argument("--html", default=None, metavar="DIR", help="save the pages the scraper saw under DIR")
    cs.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value (a site by name: scrape.staff[NAME].person=.card)")  # fmt: skip
    cs.add_argument("--pages", type=int, default=1, metavar="N", help="follow next_page to read N pages (default 1)")
    cs.add_argument("--saved", default=None, metavar="PATH",
                    help="read a saved page (a file, or a folder of .html pages) instead of fetching it")  # fmt: skip
    cs.add_argument("--as", dest="as_url", default=None, metavar="URL", help="with --saved: the URL it was served at")
    cs.add_argument("--saved-profile", default=None, metavar="FILE",
                    help="with --saved: a saved profile page, read as the first one the crawl follows")  # fmt: skip
    cs.add_argument("--json", action="store_true", help="print the full rows as one JSON document")
    cf = scsub.add_parser("check-feed", help="read a feed site's first page per hashtag and print its posts as rows")
    cf.add_argument("--config", required=True, help="a config file, or a site file (configs/sites/*.yaml)")
    cf.add_argument("--site", required=True, help="the feed site's name")
    cf.add_argument("--tag", default=None, help="one hashtag instead of the site's hashtags")
    cf.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config value (a feed by name: scrape.feeds[NAME].max_pages=2)")  # fmt: skip
    cf.add_argument("--saved", default=None, metavar="FILE",
                    help="read a saved response body (page.json) instead of fetching the page")  # fmt: skip
    cf.add_argument("--as", dest="as_url", default=None, metavar="URL",
                    help="with --saved: the URL it was served at (default: the crawl's first URL)")  # fmt: skip
    cf.add_argument("--json", action="store_true", help="print the full rows as one JSON document")

    # The scheduler parses its own options (pipeline/score/scheduler.py): imported only when it runs.
    sch = sub.add_parser("scheduler", add_help=False, help="submit the score job on score.schedule, one at a time")
    sch.add_argument("options", nargs=argparse.REMAINDER, help="see python -m pipeline scheduler --help")
    return p


def _stage(args: argparse.Namespace, cfg: Config) -> int:
    opts: dict[str, Any] = {}
    if args.name == "score" and args.images:
        opts["images"] = args.images
    if args.name == "train" and args.resume:
        opts["resume"] = True
    summary = run_stages(cfg, (args.name,), opts={args.name: opts})[args.name]
    print(json.dumps({args.name: summary}, default=str))
    return 0


def _all(args: argparse.Namespace, cfg: Config) -> int:
    t0 = time.monotonic()
    _print_summary(cfg, run_stages(cfg), time.monotonic() - t0)
    return 0


def _demo(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.demo.server import DemoServer

    t0 = time.monotonic()
    with DemoServer(host="127.0.0.1", port=args.port, n_posts=args.n_posts) as srv:
        os.environ["DEMO_BASE_URL"] = srv.base_url
        cfg = load(args) if args.config else load_config(_repo() / "configs" / "demo.yaml")
        print(f"demo sites: {srv.base_url}  (feed: {srv.base_url}/api/feed?tag=selfie&page=1)", flush=True)
        summaries = run_stages(cfg, opts={"labels": {"truth": srv.truth()}})
    _print_summary(cfg, summaries, time.monotonic() - t0)
    _print_reports(cfg, summaries)
    return 0


def _print_reports(cfg: Config, summaries: dict[str, dict]) -> None:
    """The demo ends with the pictures: the model report (written now) and the labels report (written by labels)."""
    from pipeline.report.html import write_report
    from pipeline.store import LABELS_DS, DataRoot

    root = DataRoot(cfg.data_root)
    run_dir = (summaries.get("train") or {}).get("model_dir")
    if run_dir:
        print(f"model report:  {write_report(run_dir, cfg)}")
    labels_report = root.path(LABELS_DS, "report.html")
    if root.fs.get_file_info(labels_report).type.name == "File":
        print(f"labels report: {labels_report}")


def _faces(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.faces import crop_folder

    print(json.dumps(crop_folder(args.input, args.output, args.size, cfg.faces), default=str))
    return 0


def _labels(args: argparse.Namespace, cfg: Config) -> int:
    """An import writes images, ``faces/`` and ``labels/<task>``: it holds the ``imports`` lock (which ``forget``
    takes too, so forget never sweeps an import's images as unreferenced) and the ``faces`` stage's lock."""
    import contextlib

    from pipeline.locks import stage_lock

    with contextlib.ExitStack() as held:
        for name in ("imports", "faces"):
            held.enter_context(stage_lock(cfg, name))
        return _import(args, cfg)


def _import(args: argparse.Namespace, cfg: Config) -> int:
    if args.labels_cmd == "import-classes":
        from pipeline.labels.imports import ImportInputError, import_classes

        opts = {k: getattr(args, k) for k in ("csv", "images", "file_column", "label_column", "person_column",
                                               "split_column", "group_column", "label_map", "folders")}  # fmt: skip
        try:
            summary = import_classes(cfg, args.task or cfg.train.task, detect=args.detect, **opts)
        except ImportInputError as err:
            raise ConfigError(str(err)) from None
        print(json.dumps(summary, default=str))
        return 0
    from pipeline.labels.beauty import import_scores

    summary = import_scores(args.images, args.scores, cfg, protocol=args.protocol, detect=args.detect)
    print(json.dumps(summary, default=str))
    return 0


def _rate(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.score.photo import format_rating, rate_photo

    result = rate_photo(args.photo, model_dir=args.model, cfg=cfg)
    print(json.dumps(result, default=str) if args.json else format_rating(result))
    return 0 if result.get("status") != "error" else EXIT_FAILED


def _best_crop(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.score.photo import best_crop

    print(json.dumps(best_crop(args.photo, args.out, k=args.k, cfg=cfg, model_dir=args.model), default=str))
    return 0


def _report(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.report.html import write_report

    print(write_report(args.run, cfg))
    return 0


def _forget(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.privacy import forget

    kind, value = next((k, v) for k in ("user", "person", "image", "acct") if (v := getattr(args, k)))
    if kind == "person" and not args.site:
        raise ConfigError("forget --person ID needs --site SITE: a person is keyed by (site, id)")
    if kind == "image" and args.site:
        raise ConfigError("forget --image takes no --site: an image is keyed by its sha256 alone")
    if kind == "acct" and (args.site or "@" not in value.lstrip("@")):
        raise ConfigError("forget --acct takes USER@HOST and no --site: an account is the same on every server")
    print(json.dumps(forget(cfg, kind, value, site=args.site), default=str))
    return 0


def _privacy(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.privacy import init_key
    from pipeline.store import DataRoot

    print(json.dumps(init_key(DataRoot(cfg.data_root), cfg.privacy, adopt=args.adopt)))
    return 0


def _retention(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.locks import stage_lock
    from pipeline.privacy import apply_retention

    with stage_lock(cfg, "retention"):  # forget takes it too (the scrape's own retention runs under its lock)
        print(json.dumps(apply_retention(cfg), default=str))
    return 0


def _configured(handler: Callable[[argparse.Namespace, Config], int]) -> Callable[[argparse.Namespace], int]:
    """``handler`` given the validated config (a bad one exits 2 here, before any work), with logging set up."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        cfg = load(args)
        from pipeline.runtime import setup_logging

        setup_logging()
        return handler(args, cfg)

    return run


def _report_of_run(args: argparse.Namespace) -> int:
    """``report --run <root>/models/<run_id>`` without --config or --data-root: the data root is the run's."""
    if not (args.config or args.data_root):
        args.data_root = _data_root_of_run(args.run)
    return _configured(_report)(args)


def _scheduler(args: argparse.Namespace) -> int:
    """``scheduler``: its own options and config (pipeline/score/scheduler.py), one tick or a loop of jobs."""
    from pipeline.score.scheduler import main as scheduler_main

    return scheduler_main(args.options)


def _scrape(args: argparse.Namespace) -> int:
    """``scrape check-site`` / ``check-feed``: their --config may be a site file (pipeline/scrape/staff/check.py,
    pipeline/scrape/check_feed.py), read there."""
    if args.scrape_cmd == "check-feed":
        from pipeline.scrape.check_feed import main as check_feed_main

        return check_feed_main(args)
    from pipeline.scrape.staff.check import main as check_site_main

    return check_site_main(args)


# Every command's handler. Most take the validated config (_configured); scheduler and scrape check-site/check-feed
# read their own (a scheduler's options, a site file).
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "stage": _configured(_stage),
    "all": _configured(_all),
    "demo": _configured(_demo),
    "faces": _configured(_faces),
    "labels": _configured(_labels),
    "rate": _configured(_rate),
    "best-crop": _configured(_best_crop),
    "report": _report_of_run,
    "forget": _configured(_forget),
    "privacy": _configured(_privacy),
    "retention": _configured(_retention),
    "scheduler": _scheduler,
    "scrape": _scrape,
}


def dispatch(args: argparse.Namespace) -> int:
    """Run the command's handler (:data:`HANDLERS`)."""
    return HANDLERS[args.cmd](args)


def _data_root_of_run(run: str) -> str:
    """``<root>/models/<run_id>`` → ``<root>``; anything else is one clear line (exit 2), never another root."""
    from pipeline.store import MODELS_DS

    if "://" in run:
        head, _, rest = run.partition("://")
        parts = rest.rstrip("/").split("/")
        if len(parts) >= 3 and parts[-2] == MODELS_DS:
            return f"{head}://" + "/".join(parts[:-2])
    else:
        path = Path(run).resolve()
        if path.parent.name == MODELS_DS:
            return str(path.parent.parent)
    raise ConfigError(f"report --run {run}: not a <data root>/models/<run_id> folder; give --config or --data-root")


def _repo() -> Path:
    return Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    import pyarrow as pa

    from pipeline.locks import StageLockedError
    from pipeline.placement import NodeLostError
    from pipeline.store import InputError, MissingDatasetError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # The scheduler's options (also --help) are its own: argparse would take them for the top-level parser's.
    args = (
        argparse.Namespace(cmd="scheduler", options=argv[1:]) if argv[:1] == ["scheduler"] else parser.parse_args(argv)
    )
    try:
        return dispatch(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except (MissingDatasetError, InputError) as err:  # missing, or there and unusable (pipeline.store.InputError)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_MISSING_INPUT
    except StageLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except NodeLostError as err:  # a placement's nodes left mid-stage and none came back (pipeline.placement)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except pa.ArrowInvalid as err:  # Parquet data that the store could not set aside (also re-raised by Ray): one line
        line = next((ln.strip() for ln in reversed(str(err).splitlines()) if ln.strip()), type(err).__name__)
        print(f"error: unreadable data: {line} (data root: {_data_root_of(args)})", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:  # disk full, a read-only or missing data root, a lost object store: one line
        print(f"error: {_os_error_line(err)} (data root: {_data_root_of(args)})", file=sys.stderr)
        return EXIT_FAILED


def _os_error_line(err: OSError) -> str:
    """One line for an OSError, also one re-raised by Ray from a task (whose str holds a traceback)."""
    if err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else f"[Errno {err.errno}] {err.strerror}"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _data_root_of(args: argparse.Namespace) -> str:
    if getattr(args, "data_root", None):
        return args.data_root
    try:
        return load(args).data_root
    except Exception:
        return "?"


def job_main(stage_name: str, argv: list[str] | None = None) -> int:
    """Entry of ``jobs/<stage>.py``: ``--config``, ``--data-root``; ``all`` runs every stage."""
    cmd = ["all"] if stage_name == "all" else ["stage", stage_name]
    return main(cmd + list(sys.argv[1:] if argv is None else argv))
