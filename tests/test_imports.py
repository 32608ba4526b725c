"""The import graph of ``pipeline/``: no import cycle, the scrape rooms' arrows go one way, adapters named once.

The graph is read with ``ast`` from the files, without importing them. An edge is an ``import pipeline.x`` or a
``from pipeline.x import y`` (to ``pipeline.x.y`` when that is a module, else to ``pipeline.x``); a relative import
counts the same. Module-level imports are the statements that run when the module is imported (also inside a
top-level ``try``/``if``, but not under ``if TYPE_CHECKING:``); imports inside functions and methods are counted
apart. Neither kind may close a cycle, and neither may point up or sideways across the scrape rooms' floors.

No module but a feed adapter's own and the registry names an adapter: none imports an adapter module, and none
compares a feed's ``adapter`` with a name (what an adapter does differently is one of its hooks).

Dataset names are spelled once, in ``pipeline/store.py``: no call that names a dataset passes one as a literal.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "pipeline"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_pkg: bool, modules: dict[str, Path]) -> set[str]:
    """The ``pipeline`` modules one import statement in module ``here`` names."""
    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("pipeline"):
                out.add(name)
        return out
    base = node.module or ""
    if node.level:
        anchor = here.split(".") if is_pkg else here.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    if not base.startswith("pipeline"):
        return out
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if sub in modules else base)
    return {m for m in out if m in modules}


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, function-level edges) of every module under ``pipeline/``."""
    modules = _modules()
    top: dict[str, set[str]] = {m: set() for m in modules}
    inner: dict[str, set[str]] = {m: set() for m in modules}

    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"

        def visit(nodes: list[ast.stmt], at_top: bool, name: str = name, is_pkg: bool = is_pkg) -> None:
            for node in nodes:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    (top if at_top else inner)[name] |= _targets(node, name, is_pkg, modules) - {name}
                elif isinstance(node, ast.If) and _is_type_checking(node):
                    continue  # annotations only: never run
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    visit(list(ast.walk(node))[1:], False)
                elif isinstance(node, ast.ClassDef | ast.If | ast.Try | ast.With | ast.For | ast.While):
                    for field in ("body", "orelse", "finalbody", "handlers"):
                        children = getattr(node, field, None) or []
                        if field == "handlers":
                            children = [s for h in children for s in h.body]
                        visit(children, at_top)

        visit(ast.parse(path.read_text()).body, True)
    return top, inner


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return comps


def test_graph_reader_sees_the_imports_it_must():
    """The reader itself: a known module-level import, a known lazy one, a relative package import."""
    top, inner = import_graph()
    assert "pipeline.config" in top["pipeline.scrape.net.http"]
    assert "pipeline.scrape.net.ratelimit" in inner["pipeline.scrape.net.http"]  # LocalLimiter, imported lazily
    assert "pipeline.scrape.stage" in inner["pipeline.scrape"]  # `run`, imported when first asked for
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_module_level_imports():
    top, _ = import_graph()
    cycles = _cycles(top)
    assert not cycles, "module-level import cycles in pipeline/:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_counting_lazy_imports():
    """Also with the imports inside functions: a lazy import may save start-up time, never hide a cycle."""
    top, inner = import_graph()
    cycles = _cycles({m: top[m] | inner[m] for m in top})
    assert not cycles, "import cycles in pipeline/:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# The scrape package's floors, lowest first: a module may import its own floor and those below it, never above.
# feeds/ and staff/ share a floor and do not import each other.
FLOORS = {
    "pipeline.scrape.net": 0,
    "pipeline.scrape.feeds": 1,
    "pipeline.scrape.staff": 1,
}


def _floor(module: str) -> tuple[int, str] | None:
    for room, floor in FLOORS.items():
        if module == room or module.startswith(room + "."):
            return floor, room
    if module.startswith("pipeline.scrape.") and module != "pipeline.scrape.__init__":
        return 2, "pipeline.scrape"  # the engine: stage, crawl, work, workers, rows, writer, counters
    return None


def test_scrape_rooms_import_downwards_only():
    """net/ below feeds/ and staff/, below the engine; counting lazy imports inside functions too."""
    top, inner = import_graph()
    wrong = []
    for graph in (top, inner):
        for src, dsts in graph.items():
            a = _floor(src)
            if a is None:
                continue
            for dst in dsts:
                b = _floor(dst)
                if b is None:
                    continue
                if b[0] > a[0] or (b[0] == a[0] and b[1] != a[1]):
                    wrong.append(f"{src} -> {dst}")
    assert not wrong, "scrape imports that go up or sideways:\n" + "\n".join(sorted(set(wrong)))


def test_no_module_outside_an_adapter_names_one():
    from pipeline.scrape.feeds.registry import ADAPTERS

    adapter_modules = {path.partition(":")[0] for path in ADAPTERS.values()}
    allowed = adapter_modules | {"pipeline.scrape.feeds.registry"}
    top, inner = import_graph()
    importers = sorted(
        f"{m} imports {d}" for m in top if m not in allowed for d in (top[m] | inner[m]) & adapter_modules
    )
    assert not importers, "adapter modules imported outside the registry:\n" + "\n".join(importers)

    named = []
    for name, path in _modules().items():
        if name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            on_adapter = any(isinstance(s, ast.Attribute) and s.attr == "adapter" for s in sides)
            literal = any(isinstance(s, ast.Constant) and s.value in ADAPTERS for s in sides)
            if on_adapter and literal:
                named.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not named, "feed adapters named outside their modules:\n" + "\n".join(named)


def _logger_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every ``logging.getLogger(...)`` call; ``__name__`` and other expressions as their source."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger" and node.args:
            arg = node.args[0]
            out.append((node.lineno, arg.value if isinstance(arg, ast.Constant) else ast.unparse(arg)))
    return out


def test_every_logger_is_under_the_facerank_logger():
    """``setup_logging`` configures the ``facerank`` logger: a module logging elsewhere (``__name__`` is
    ``pipeline.…``) has its INFO lines dropped in the driver."""
    wrong = []
    for path in _modules().values():
        for line, logger in _logger_names(ast.parse(path.read_text())):
            if not (logger == "facerank" or str(logger).startswith("facerank.")):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {logger}")
    assert not wrong, "loggers outside `facerank`:\n" + "\n".join(wrong)


def test_scrape_takes_its_logger_from_logging_not_from_runtime():
    """pipeline.runtime imports Ray: a scrape module that only logs must not pull it in for ``log``."""
    top, inner = import_graph()
    users = sorted(m for m in top if m.startswith("pipeline.scrape") and "pipeline.runtime" in top[m] | inner[m])
    assert users == ["pipeline.scrape.stage"], users  # the stage's entry (stage_entry) is runtime's job


# DataRoot's methods (and the labels' ``scan``, ``sub_dataset``) whose first argument is a dataset or a path in one.
_DATASET_CALLS = {"path", "exists", "mkdir", "schema", "has", "part_files", "part_infos", "quarantine",
                  "quarantine_unreadable", "require", "dataset", "read", "done_keys", "write_part", "replace",
                  "clean_tmp", "list_dir", "scan", "sub_dataset"}  # fmt: skip


def test_dataset_names_are_spelled_only_in_the_store():
    """A call that names a dataset takes it from ``pipeline.store`` (``FACES_DS``, ``MODELS_DS``, ...), never as a
    literal such as ``root.read("faces")`` or ``root.path("models/x")``: one place per name."""
    names = set()  # the store's *_DS and *_DIR constants, read without importing it (pyarrow is slow to import)
    for node in ast.parse((PKG / "store.py").read_text()).body:
        if isinstance(node, ast.Assign):
            targets = [t for tgt in node.targets for t in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])]
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for t, v in zip(targets, values, strict=False):
                if isinstance(t, ast.Name) and t.id.endswith(("_DS", "_DIR")) and isinstance(v, ast.Constant):
                    names.add(v.value)
    assert {"posts", "faces", "models", "images", "feed_cursors"} <= names

    def spelled(arg: ast.expr) -> bool:
        if isinstance(arg, ast.JoinedStr):
            arg = arg.values[0] if arg.values else arg
        return isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.split("/")[0] in names

    found = []
    for path in _modules().values():
        text = path.read_text()
        if not any(f"{q}{n}" in text for n in names for q in "'\""):
            continue  # no literal that starts with a name: nothing to parse
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if func in _DATASET_CALLS and spelled(node.args[0]):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not found, "dataset names spelled by hand:\n" + "\n".join(found)


def test_the_process_group_module_imports_no_torch_at_module_level():
    """Ray Train's controller unpickles ``pipeline.process_group``'s ``TorchConfig`` and its backend before it starts
    any worker; a module-level torch import there (Ray's ``ray.train.torch.config`` imports torch) cost it 2-3 CPU
    seconds (docs/benchmarks.md, train section). What runs in the workers imports torch inside functions. Standing
    in for Ray's ``TorchConfig`` and ``_TorchBackend``, its classes assign the same fields, defaults and backend
    attributes (GPU workers of a node see each other's GPUs) as Ray's source, read here without importing it."""
    tree = ast.parse((REPO / "pipeline" / "process_group.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    assert not {n for n in names if n == "torch" or n.startswith(("torch.", "ray.train.torch"))}, names

    import importlib.util

    ray_dir = Path(importlib.util.find_spec("ray").origin).parent
    ray_tree = ast.parse((ray_dir / "train" / "torch" / "config.py").read_text())

    def assigned(tree: ast.Module, cls: str, skip: tuple = ()) -> dict:
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
        return {
            n.target.id: ast.literal_eval(n.value)
            for n in body
            if isinstance(n, ast.AnnAssign) and n.value is not None and n.target.id not in skip
        }

    assert assigned(tree, "TorchConfig") == assigned(ray_tree, "TorchConfig")
    assert assigned(tree, "_LoopbackTorchBackend", skip=("store_path",)) == assigned(ray_tree, "_TorchBackend")
