"""Every ``python -m pipeline ...`` command the docs show is one the command line accepts.

The commands are taken from README.md and docs/*.md: lines of fenced code blocks (continuation lines joined) and
inline code spans that start with ``python -m pipeline``. Each is split as a shell would (``shlex``; ``$S`` and
``<run_id>``-style placeholders become plain words) and parsed by the real parser (:func:`pipeline.cli.build_parser`;
the scheduler's own options for ``scheduler``); a command named in prose without its ``--config`` is completed with
one. A documented command that argparse would refuse (``--label-map
"-1=female,1=male"`` was one: a value starting with ``-`` reads as an option) fails here with the doc and the line.
What the commands do is tested where the docs name the test.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def documented_commands() -> list[tuple[str, str]]:
    """(doc name, command line) of every ``python -m pipeline`` command in the docs."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, flags=re.S):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split(" #", 1)[0].strip()
                if line.startswith("python -m pipeline ") or " python -m pipeline " in line:
                    out.append((doc.name, line[line.index("python -m pipeline") :]))
        for span in re.findall(r"`(python -m pipeline [^`]+)`", text):
            out.append((doc.name, span))
    return out


def _argv(line: str) -> list[str]:
    line = re.sub(r"<[^>]+>", "x", line.replace("...", "x")).replace("$S", "S").replace('"$S/', '"S/')
    words = shlex.split(line)[3:]  # after "python -m pipeline"
    # [--optional parts] as the docs write them: keep what is inside the brackets, as a user would type it
    return [w.strip("[]") for w in words if w not in ("[", "]", "|")]


def _command_exists(parser, words: list[str]) -> bool:
    """Whether ``words`` walk a path of sub-commands (and choices) of ``parser``."""
    import argparse

    for w in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and w in subs[0].choices:
            parser = subs[0].choices[w]
            continue
        plain = [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
        return any(a.choices and w in a.choices for a in plain)
    return True


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 25 and any("import-classes" in c for _, c in COMMANDS)


def test_a_value_starting_with_a_dash_needs_the_equals_form():
    """What this module guards: the form the recipes once showed is refused, the documented one is accepted."""
    from pipeline.cli import build_parser

    base = ["labels", "import-classes", "--config", "c.yaml", "--csv", "t.csv", "--images", "i"]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--label-map", "-1=female,1=male"])
    assert build_parser().parse_args([*base, "--label-map=-1=female,1=male"]).label_map == "-1=female,1=male"


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_parses(doc, line):
    from pipeline.cli import build_parser

    argv = _argv(line)
    if argv[:1] in (["--help"], []):
        return
    parser = build_parser()
    if argv[0] == "scheduler":
        import argparse

        from pipeline.score.scheduler import add_arguments

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        argv = argv[1:]
    if not any(w.startswith("-") for w in argv):  # prose naming a command (`python -m pipeline faces`): it exists
        assert _command_exists(parser, argv), f"{doc}: `{line}` names no command"
        return
    # prose names a command without its config (`python -m pipeline stage labels`): completed with one
    tries = [argv] if "--config" in argv else [argv, [*argv, "--config", "configs/test.yaml"]]
    codes = []
    for a in tries:
        try:
            parser.parse_args(a)
            return
        except SystemExit as err:
            codes.append(err.code)
    pytest.fail(f"{doc}: `{line}` is refused by the command line (exit {codes})")
