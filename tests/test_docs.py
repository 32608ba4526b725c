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
