"""Field paths into a parsed JSON document: the small language of ``FeedSite.fields`` (docs/feeds.md).

A path is segments joined by ``.``; ``""`` or ``"."`` is the document itself. A segment is

* ``name``: that key of an object (``user.id``);
* ``N`` (``0``, ``-1``): that element of a list (``data.items.0``);
* ``name[]``: the list under ``name``, and the rest of the path is applied to each element (a projection:
  ``tags[].name`` gives the list of tag names; elements where the rest matches nothing are left out);
* ``name[key=value]``: the elements of the list under ``name`` whose ``key`` equals ``value`` as text (a selection,
  still a list: ``media_attachments[type=image].0.url`` is the first image attachment's URL);
* ``[]`` / ``[key=value]`` alone: the same on the current value (``[].id`` projects a top-level array).

A field may also be given a list of paths, tried in order: the first that matches something wins
(``[media_attachments[type=image].0.url, media_attachments[type=unknown].0.remote_url]``).

:func:`compile_path` raises :class:`PathSyntaxError` for a path it cannot read (the config check runs it on
every field, so a typo is one config error line); :func:`get` answers :data:`MISSING` when nothing matches, which
callers tell apart from a JSON ``null``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING", "__bool__": lambda self: False})()

_SEGMENT = re.compile(r"^(?P<name>[^\[\]=]*)(?:\[(?:(?P<key>[^\[\]=]+)=(?P<value>[^\[\]]*))?(?P<close>\]))?$")
MAX_PATH_LEN = 500


class PathSyntaxError(ValueError):
    """A field path that does not follow the syntax in the module docstring."""


@dataclasses.dataclass(frozen=True)
class Step:
    """One segment: a key or index (``name``), then optionally a projection or a selection."""

    name: str | None  # None: no key/index step (a bare ``[]`` / ``[k=v]``)
    project: bool = False
    select: tuple[str, str] | None = None


def compile_path(path: str) -> tuple[Step, ...]:
    """The steps of ``path``; raises :class:`PathSyntaxError`."""
    if not isinstance(path, str):
        raise PathSyntaxError(f"a field path must be text, not {type(path).__name__}")
    if len(path) > MAX_PATH_LEN:
        raise PathSyntaxError("field path too long")
    if path in ("", "."):
        return ()
    steps = []
    for seg in _split(path):
        m = _SEGMENT.match(seg)
        if m is None or (not m["name"] and not m["close"]):
            raise PathSyntaxError(f"bad segment {seg!r} in field path {path!r}")
        select = (m["key"], m["value"]) if m["key"] is not None else None
        steps.append(Step(m["name"] or None, project=bool(m["close"]) and select is None, select=select))
    return tuple(steps)


def _split(path: str) -> list[str]:
    """Split on dots outside brackets (a selection's value may hold a dot: ``[type=image.png]``)."""
    out, cur, depth = [], [], 0
    for ch in path:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise PathSyntaxError(f"unbalanced ']' in field path {path!r}")
        if ch == "." and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise PathSyntaxError(f"unbalanced '[' in field path {path!r}")
    out.append("".join(cur))
    return out


def _key(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, MISSING)
    if isinstance(obj, list) and re.fullmatch(r"-?\d{1,18}", name):
        i = int(name)
        return obj[i] if -len(obj) <= i < len(obj) else MISSING
    return MISSING


def _text(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int | float):
        return str(v)
    return None


def evaluate(obj: Any, steps: tuple[Step, ...]) -> Any:
    """Apply compiled ``steps`` to ``obj``; :data:`MISSING` when nothing matches."""
    for i, st in enumerate(steps):
        if st.name is not None:
            obj = _key(obj, st.name)
            if obj is MISSING:
                return MISSING
        if st.select is not None:
            if not isinstance(obj, list):
                return MISSING
            k, v = st.select
            obj = [e for e in obj if isinstance(e, dict) and _text(e.get(k)) == v]
        elif st.project:
            if not isinstance(obj, list):
                return MISSING
            rest = steps[i + 1 :]
            vals = [evaluate(e, rest) for e in obj]
            return [x for x in vals if x is not MISSING]
    return obj


class FieldPath:
    """One field's path, or alternatives tried in order: the first that matches something (even ``null``) other
    than an empty list."""

    def __init__(self, spec: str | list[str]):
        paths = [spec] if isinstance(spec, str) else list(spec)
        if not paths:
            raise PathSyntaxError("an empty list of field paths")
        self.text = spec
        self.alternatives = [compile_path(p) for p in paths]

    def get(self, obj: Any) -> Any:
        """The first alternative's match; :data:`MISSING` when none matches."""
        empty: Any = MISSING
        for steps in self.alternatives:
            v = evaluate(obj, steps)
            if isinstance(v, list) and not v:  # an empty projection/selection: the next alternative may match
                empty = v
                continue
            if v is not MISSING:
                return v
        return empty

    def __repr__(self) -> str:
        return f"FieldPath({self.text!r})"


def get(obj: Any, spec: str | list[str]) -> Any:
    """``FieldPath(spec).get(obj)``."""
    return FieldPath(spec).get(obj)
