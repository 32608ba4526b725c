"""Config loading: typed, validated up front; a bad config is one line on stderr and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_and_test_configs_load(monkeypatch):
    monkeypatch.setenv("DEMO_BASE_URL", "http://127.0.0.1:9999")
    for name in ("demo.yaml", "test.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.scrape.feeds[0].base_url == "http://127.0.0.1:9999"
        assert cfg.scrape.staff[0].start_urls[0].startswith("http://127.0.0.1:9999/uni/")
        assert {s.department for s in cfg.scrape.staff} == {"cs", "econ", "german", "mech"}
        assert cfg.labels.selfie.min_post_age_days == 30


def test_env_default_and_override(monkeypatch):
    monkeypatch.delenv("DEMO_BASE_URL", raising=False)
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides={"data_root": "/tmp/x", "train.epochs": 1})
    assert cfg.scrape.feeds[0].base_url == "http://127.0.0.1:8765"
    assert cfg.data_root == "/tmp/x" and cfg.train.epochs == 1


@pytest.mark.parametrize(
    "text, needle",
    [
        ("data_root: x\nbogus: 1\n", "bogus: unknown key"),
        ("train:\n  epochs: many\n", "train.epochs"),
        ("labels:\n  split: {train: 0.9, val: 0.2, test: 0.1}\n", "sum to 1"),
        ("train: [1, 2\n", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        # a feed adapter's options are its own section, named like it (pipeline/scrape/feeds/registry.py)
        ("scrape:\n  feeds:\n    - {name: j, adapter: json, base_url: x, fields: {id: pk}}\n", "put it under `json:`"),
        (
            "scrape:\n  feeds:\n    - {name: m, adapter: mastodon, base_url: x, mastodon: {limit: 80}}\n",
            "mastodon.limit",
        ),
        (
            "scrape:\n  feeds:\n    - {name: m, adapter: mastodon, base_url: x, mastodon: {lmit: 8}}\n",
            "lmit: unknown key",
        ),
        ("scrape:\n  feeds:\n    - {name: f, adapter: nope, base_url: x}\n", "'nope' is not a feed adapter"),
        ("scrape:\n  feeds:\n    - {name: m, adapter: mastodon, base_url: x, json: {}}\n", "adapter is 'mastodon'"),
    ],
)
def test_bad_configs_raise_one_line(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_feed_options_come_from_the_adapters_own_models_without_importing_ray():
    """The config checks each feed's section with its adapter's model, found by name in the registry, which imports
    only that adapter's module (no stage, no Ray); a dumped feed entry validates again to the same options."""
    code = (
        "import sys\n"
        "from pipeline.config import FeedSite, load_config\n"
        "cfg = load_config('configs/demo.yaml')\n"
        "print(sorted(type(f.options).__name__ for f in cfg.scrape.feeds), 'ray' in sys.modules)\n"
        "f = cfg.scrape.feeds[1]\n"
        "print(FeedSite.model_validate(f.model_dump()).options == f.options, f.options.fields['id'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["['JsonFeedOptions', 'JsonFeedOptions', 'MastodonOptions'] False", "True id"]


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.yaml")


@pytest.mark.parametrize("job", ["scrape", "faces", "labels", "train", "score", "run_all"])
def test_jobs_exit_2_on_bad_config_before_work(tmp_path, job):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scrape:\n  num_actors: zero\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / f"{job}.py"), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "scrape.num_actors" in lines[0]
    assert not (tmp_path / "data").exists()


def test_missing_config_file_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "stage", "labels", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "config file not found" in proc.stderr


def test_stage_without_input_names_the_missing_dataset(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_root: {tmp_path / 'empty'}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "stage", "labels", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 3, proc.stderr
    assert "'posts'" in proc.stderr or "'faces'" in proc.stderr
    assert "run the" in proc.stderr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=20,
    )
)
def test_fuzzed_config_trees_never_crash(tree):
    """Any YAML-shaped tree is either a valid config or a one-line ConfigError."""
    try:
        parse_config(tree)
    except ConfigError as err:
        assert "\n" not in str(err)


def _site_config(tmp_path: Path, site_file: str) -> Path:
    (tmp_path / "sites").mkdir(exist_ok=True)
    (tmp_path / "sites" / "one.yaml").write_text(site_file)
    main = tmp_path / "config.yaml"
    main.write_text(f"data_root: {tmp_path}/data\nsites: [sites/*.yaml]\n")
    return main


MASTODON_SITE = "feeds:\n  - {{name: s, adapter: mastodon, base_url: https://s.example, hashtags: [{tag}]{extra}}}\n"


def test_a_site_file_reads_only_facerank_variables_and_names_only_token_variables(tmp_path, monkeypatch):
    """A site file cannot put the crawl's secrets in a URL or its bearer token: only FACERANK_* variables expand,
    and access_token_env names a FACERANK_…TOKEN / MASTODON_…TOKEN variable."""
    from pipeline.cli import main

    monkeypatch.setenv("PROBE_SECRET", "AKIA-probe-secret")
    monkeypatch.setenv("FACERANK_TAG", "selfie")
    leak = _site_config(tmp_path, MASTODON_SITE.format(tag="'x${PROBE_SECRET:-}'", extra=""))
    with pytest.raises(ConfigError, match=r"one.yaml: \$\{PROBE_SECRET\}: a site file may read FACERANK_\* variables"):
        load_config(leak)
    assert main(["retention", "--config", str(leak)]) == 2
    ok = _site_config(tmp_path, MASTODON_SITE.format(tag="'${FACERANK_TAG}'", extra=""))
    assert load_config(ok).scrape.feeds[0].hashtags == ["selfie"]
    for name in ("PROBE_SECRET", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN", "FACERANK_OPTOUT_KEY", "mastodon_token"):
        path = _site_config(tmp_path, MASTODON_SITE.format(tag="a", extra=f", mastodon: {{access_token_env: {name}}}"))
        with pytest.raises(ConfigError, match="access_token_env"):
            load_config(path)
    for name in ("MASTODON_TOKEN", "FACERANK_SOCIAL_TOKEN"):
        path = _site_config(tmp_path, MASTODON_SITE.format(tag="a", extra=f", mastodon: {{access_token_env: {name}}}"))
        assert load_config(path).scrape.feeds[0].options.access_token_env == name
    # the main config still reads any variable
    monkeypatch.setenv("DEMO_BASE_URL", "http://127.0.0.1:9999")
    assert load_config(REPO / "configs" / "demo.yaml").scrape.feeds[0].base_url == "http://127.0.0.1:9999"


def test_an_unset_variable_without_a_default_is_refused_naming_it(tmp_path, monkeypatch):
    from pipeline.cli import main

    monkeypatch.delenv("FACERANK_UNSET_ROOT", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text("data_root: ${FACERANK_UNSET_ROOT}\n")
    with pytest.raises(ConfigError, match=r"\$\{FACERANK_UNSET_ROOT\} is not set"):
        load_config(path)
    assert main(["retention", "--config", str(path)]) == 2
    agent = "scrape: {http: {user_agent: 'x${FACERANK_UNSET_ROOT:-}'}}"
    path.write_text(f"data_root: ${{FACERANK_UNSET_ROOT:-d1}}\n{agent}\n")
    cfg = load_config(path)
    assert cfg.data_root == "d1" and cfg.scrape.http.user_agent == "x"
    monkeypatch.setenv("FACERANK_UNSET_ROOT", "d2")
    assert load_config(path).data_root == "d2"


def test_every_command_is_dispatched_through_the_handlers_table(monkeypatch):
    """scheduler and scrape check-site too: dispatch is one table look-up, no command is special-cased."""
    import argparse

    from pipeline import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(cli.HANDLERS)
    calls = []
    monkeypatch.setitem(cli.HANDLERS, "scheduler", lambda args: calls.append(args.options) or 0)
    assert cli.main(["scheduler", "--once"]) == 0 and calls == [["--once"]]
