"""The README and the docs: every relative link resolves, and the README stays short.

Checked files: ``README.md``, every ``docs/*.md`` and ``bundle/docs/README.md``. A link is a
Markdown inline link or image, ``[text](target)`` or ``![alt](target)``, outside fenced code
blocks and inline code spans. Links with a scheme (``http:``, ``https:``, ``mailto:``) and pure
``#anchor`` links are not checked; for the others the ``#anchor`` part is dropped and the target
must be an existing file or folder relative to the Markdown file that links it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\s*\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_files() -> List[Path]:
    """The Markdown files whose links are checked."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bundle" / "docs" / "README.md"]


def relative_links(text: str) -> List[Tuple[int, str]]:
    """``(line number, target)`` of every relative link in Markdown ``text`` (anchors kept)."""
    links = []
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(2)[0] == fence[0] and len(opened.group(2)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(2)
            continue
        for match in _LINK.finditer(_CODE_SPAN.sub("", line)):
            target = match.group(1).strip("<>")
            if target.startswith("#") or _SCHEME.match(target):
                continue
            links.append((number, target))
    return links


def broken_links(path: Path, root: Path = ROOT) -> List[str]:
    """``file:line: target`` for each relative link of ``path`` that does not resolve (``file`` relative to ``root``)."""
    broken = []
    for number, target in relative_links(path.read_text(encoding="utf-8")):
        where = target.split("#", 1)[0]
        if not where or not (path.parent / where).exists():
            broken.append(f"{path.relative_to(root)}:{number}: {target}")
    return broken


def test_link_extraction() -> None:
    text = "\n".join(
        [
            '[a](docs/a.md) and ![img](pics/x.png "title") and [b](<docs/b c.md#part>)',
            "[web](https://example.org) [mail](mailto:x@example.org) [top](#layout) `[code](nope.md)`",
            "```bash",
            "[fenced](nope.md)",
            "```",
            "[[nested] text](docs/c.md#x)",
        ]
    )
    assert relative_links(text) == [(1, "docs/a.md"), (1, "pics/x.png"), (1, "docs/b c.md#part"), (6, "docs/c.md#x")]


def test_broken_link_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/here.md#a) [dir](docs/) [gone](docs/performance.md)\n")
    assert broken_links(page, root=tmp_path) == ["README.md:1: docs/performance.md"]


def test_docs_exist() -> None:
    assert (ROOT / "docs" / "README.md").is_file(), "docs/README.md (the index of the docs) is missing"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    assert broken_links(path) == []


def test_readme_is_short() -> None:
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES} (move details to docs/)"
