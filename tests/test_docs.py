"""The docs stay true: every test they cite exists, every command and flag they show is in `--help`, every path
they name exists (README.md and docs/*.md, read as a reader would: inline code, links and shell blocks)."""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
TEST_REF = re.compile(r"(tests/test_\w+\.py)::(\w+)")
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
# A path the repository holds: under one of its folders, or a file at its root; a module named alone.
REPO_PATH = re.compile(r"^(?:alexrepro|tests|tools|recipes|docs)/[\w./-]*$|^[\w-]+\.(?:py|toml|md|sh)$")
OTHER_PROJECTS = {"layer.py", "train_val.prototxt"}  # files of cuda-convnet and Caffe the docs cite
SHELL_LANGS = {"", "bash", "sh", "console", "shell"}


def ids(items: list[tuple[Path, str]]) -> list[str]:
    return [f"{doc.name}:{text[:60]}" for doc, text in items]


def prose(text: str) -> str:
    """The text outside fenced blocks."""
    return FENCE.sub("", text)


def shell_lines(text: str) -> list[str]:
    """Each command of the shell blocks, continuation lines joined, comments dropped."""
    lines = []
    for lang, body in FENCE.findall(text):
        if lang not in SHELL_LANGS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def cited_tests() -> list[tuple[Path, str]]:
    return sorted({(d, f"{m[1]}::{m[2]}") for d in DOCS for m in TEST_REF.finditer(d.read_text())})


@pytest.mark.parametrize("doc, ref", cited_tests(), ids=ids(cited_tests()))
def test_every_cited_test_exists(doc, ref):
    path, name = ref.split("::")
    assert (ROOT / path).is_file(), f"{doc.name} cites {ref}: no file {path}"
    assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{doc.name} cites {ref}: no such test"


def named_paths() -> list[tuple[Path, str]]:
    """Paths in inline code (`alexrepro/nets/lrn.py: local_response_norm` names the file) and links."""
    found = set()
    for doc in DOCS:
        text = prose(doc.read_text())
        for span in INLINE.findall(text):
            for token in re.split(r"[\s,;()]+", span):
                token = token.split(":", 1)[0].rstrip(".")
                if REPO_PATH.match(token) and "*" not in token:
                    found.add((doc, token))
        for target in LINK.findall(text):
            if "://" not in target and not target.startswith("mailto:"):
                found.add((doc, target))
    return sorted(found)


@pytest.mark.parametrize("doc, path", named_paths(), ids=ids(named_paths()))
def test_every_named_path_exists(doc, path):
    # From the repository's root, the document's folder, or the package (docs/ARCHITECTURE.md names modules
    # by their path inside alexrepro/).
    bases = (ROOT, doc.parent, ROOT / "alexrepro")
    if any((base / path).exists() for base in bases) or path in OTHER_PROJECTS:
        return
    # A module named alone, inside the folder the text is about (`lrn.py` in nets/): somewhere in the package.
    alone = "/" not in path and path.endswith(".py") and any(ROOT.glob(f"alexrepro/**/{path}"))
    assert alone or ("/" not in path and not path.endswith(".py")), f"{doc.name} names {path}, which does not exist"


def symbol_refs() -> list[tuple[Path, str]]:
    """`alexrepro/x.py: name` citations: the module and the function, class or constant it names."""
    found = set()
    for doc in DOCS:
        for span in INLINE.findall(prose(doc.read_text())):
            m = re.fullmatch(r"(alexrepro/[\w/]+\.py): ([A-Za-z_][\w.]*)(?:\(\))?", span.strip())
            if m:
                found.add((doc, f"{m[1]}: {m[2]}"))
    return sorted(found)


@pytest.mark.parametrize("doc, ref", symbol_refs(), ids=ids(symbol_refs()))
def test_every_cited_name_is_in_its_module(doc, ref):
    path, name = ref.split(": ")
    source = (ROOT / path).read_text()
    for part in name.split("."):  # Class.method or Class.field: each part defined in the module
        defined = rf"^\s*(?:def|class) {part}\b|^\s*{part}\s*(?::|=)|^\s*(?:from .* )?import .*\b{part}\b"
        assert re.search(defined, source, re.M), f"{doc.name} cites {ref}: {part} is not defined in {path}"


@cache
def cli():  # noqa: ANN201 - typer's own click command (typer ships its click)
    from alexrepro.cli import app

    return typer.main.get_command(app)


def alexrepro_commands() -> list[tuple[Path, str]]:
    """`alexrepro ...` as the docs show it: shell blocks, and inline code in the prose."""
    found = set()
    for doc in DOCS:
        text = doc.read_text()
        candidates = shell_lines(text) + [s for s in INLINE.findall(prose(text)) if s.startswith("alexrepro ")]
        for line in candidates:
            m = re.search(r"(?:^|\s|-m )alexrepro(\s.*)?$", line)
            if m and not line.startswith(("pip", "git")):
                found.add((doc, "alexrepro" + (m[1] or "")))
    return sorted(found)


def resolve(words: list[str]) -> tuple[object, list[str], list[str]]:
    """The (sub)command the words name, its path, and the words after it."""
    cmd, path = cli(), ["alexrepro"]
    while hasattr(cmd, "commands") and words and words[0] in cmd.commands:
        cmd = cmd.commands[words[0]]
        path.append(words.pop(0))
    return cmd, path, words


@pytest.mark.parametrize("doc, line", alexrepro_commands(), ids=ids(alexrepro_commands()))
def test_every_shown_command_and_flag_is_in_help(doc, line):
    try:
        words = shlex.split(line)[1:]
    except ValueError:  # an unclosed quote in prose: read it word by word
        words = line.split()[1:]
    alternatives = next((w for w in words[:3] if "|" in w), None)  # `bench prep|pca|loader` in a table
    if alternatives is not None:
        at = words.index(alternatives)
        for word in alternatives.replace("\\|", "|").split("|"):
            test_every_shown_command_and_flag_is_in_help(doc, " ".join(["alexrepro", *words[:at], word, *words[at + 1:]]))
        return
    words = [w.strip("[]") for w in words]  # optional parts shown as [--crops 10]
    if words[:1] == ["--"]:  # `torchrun ... -m alexrepro -- train ...`: the CLI drops torchrun's `--` (cli/app.py)
        words = words[1:]
    cmd, path, rest = resolve(words)
    if hasattr(cmd, "commands"):
        first = next((w for w in rest if not w.startswith("-") and w not in ("...", "…")), None)
        assert first is None or first.isupper() or "[" in first, (
            f"{doc.name} shows `{line}`: {' '.join(path)} has no command {first!r}")
        return
    flags = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
    shown = {f for w in rest if re.match(r"^--?[a-z]", w) for f in w.split("=", 1)[0].split("/")}
    missing = sorted(f for f in shown if f not in flags)
    assert not missing, f"{doc.name} shows `{line}`: {' '.join(path)} has no option {missing} in --help"


def nox_sessions() -> list[tuple[Path, str]]:
    found = set()
    for doc in DOCS:
        text = doc.read_text()
        for line in shell_lines(text) + INLINE.findall(prose(text)):
            for m in re.finditer(r"\bnox -s (\w+)", line):
                found.add((doc, m[1]))
    return sorted(found)


@pytest.mark.parametrize("doc, session", nox_sessions(), ids=ids(nox_sessions()))
def test_every_nox_session_shown_exists(doc, session):
    assert re.search(rf"^def {session}\(", (ROOT / "noxfile.py").read_text(), re.M), (
        f"{doc.name} shows `nox -s {session}`, which noxfile.py does not define")
