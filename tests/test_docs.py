"""The README documents every output column, and every module says what it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline import store

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "schema",
    [
        store.FETCHES,
        store.POSTS,
        store.STAFF,
        store.FACES,
        store.SELFIE_LABELS,
        store.DEPARTMENT_LABELS,
        store.BEAUTY_LABELS,
        store.SCORES,
        store.OPTOUT,
        store.AUDIT,
    ],
)
def test_readme_documents_every_column(schema):
    readme = (REPO / "README.md").read_text()
    missing = [name for name in schema.names if f"`{name}`" not in readme]
    assert not missing, f"README.md does not document columns {missing}"


def test_every_module_has_a_docstring():
    missing = []
    for path in sorted((REPO / "pipeline").rglob("*.py")) + sorted((REPO / "jobs").glob("*.py")):
        if not ast.get_docstring(ast.parse(path.read_text())):
            missing.append(str(path.relative_to(REPO)))
    assert not missing, f"modules without a docstring: {missing}"


def test_readme_starts_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    quick = readme[: readme.index("## The stages")]
    assert "make demo" in quick and "make test" in quick


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_the_docs_name_exists():
    """A claim in docs/ names the test behind it as `tests/x.py::test_y` (or `::test_y` after one): it must exist."""
    import re

    missing = []
    for doc in sorted((REPO / "docs").glob("*.md")):
        current = None
        for m in re.finditer(r"(tests/[\w/]+\.py)?::(test_\w+)", doc.read_text()):
            current = m.group(1) or current
            if current is None or not (REPO / current).exists():
                missing.append(f"{doc.name}: {m.group(0)} (no such file)")
            elif m.group(2) not in _test_names(REPO / current):
                missing.append(f"{doc.name}: {current}::{m.group(2)}")
    assert not missing, "docs name tests that do not exist:\n" + "\n".join(missing)


def test_architecture_lists_every_module():
    """docs/architecture.md has a row for every module under pipeline/ (packages' __init__ aside) and no stale one."""
    import re

    text = (REPO / "docs" / "architecture.md").read_text()
    modules = {str(p.relative_to(REPO)) for p in (REPO / "pipeline").rglob("*.py")}
    listed = set(re.findall(r"^\| `(pipeline/[\w/]+\.py)` \|", text, flags=re.M))
    missing = sorted(m for m in modules - listed if not m.endswith("/__init__.py") or m == "pipeline/__init__.py")
    assert not missing, f"docs/architecture.md does not list {missing}"
    assert not listed - modules, f"docs/architecture.md lists modules that do not exist: {sorted(listed - modules)}"


def test_feed_examples_in_the_docs_are_valid_configs():
    """Every YAML example of docs/feeds.md (a config, or a list of feed entries) loads with the config's checks."""
    import re

    import yaml

    from pipeline.config import parse_config

    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "docs" / "feeds.md").read_text(), flags=re.S)
    assert len(blocks) >= 3
    for block in blocks:
        tree = yaml.safe_load(block)
        cfg = parse_config(tree if isinstance(tree, dict) else {"scrape": {"feeds": tree}}, "docs/feeds.md")
        assert cfg.scrape.feeds
