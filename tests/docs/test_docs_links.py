"""Every relative link and image in README.md and docs/*.md must resolve.

Docs are written by several people and the code moves under them; a renamed file or
heading must fail a test instead of leaving readers at a 404. External (http, mailto)
links are not fetched: the tests run offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target "title") and ![alt](target); the target ends at whitespace or ')'.
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_INLINE_CODE = re.compile(r"`[^`]*`")
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


@dataclass(frozen=True)
class Link:
    source: Path
    line: int
    target: str


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks (links in code samples are not links)."""
    out: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in _prose_lines(path):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path: Path) -> list[Link]:
    found: list[Link] = []
    for number, line in _prose_lines(path):
        text = _INLINE_CODE.sub("", line)
        targets = [m.group(1) for m in _LINK.finditer(text)]
        ref = _REFERENCE.match(text)
        if ref:
            targets.append(ref.group(1))
        found.extend(Link(path, number, t) for t in targets if not _EXTERNAL.match(t))
    return found


def problem(link: Link) -> str | None:
    target, _, fragment = link.target.partition("#")
    dest = (link.source.parent / unquote(target)).resolve() if target else link.source
    if not dest.exists():
        return f"{target} does not exist"
    if fragment and dest.suffix == ".md" and unquote(fragment) not in anchors(dest):
        return f"no heading for #{fragment} in {dest.name}"
    return None


ALL_LINKS = [link for doc in DOCS for link in links(doc)]


def test_the_docs_have_links() -> None:
    # Guards the scanner itself: a regex that matched nothing would pass every check.
    assert len(DOCS) > 5
    assert len(ALL_LINKS) > 20


@pytest.mark.parametrize(
    "link", ALL_LINKS, ids=[f"{k.source.relative_to(REPO)}:{k.line}" for k in ALL_LINKS]
)
def test_relative_link_resolves(link: Link) -> None:
    reason = problem(link)
    assert reason is None, f"{link.source.relative_to(REPO)}:{link.line}: {link.target}: {reason}"


def test_every_doc_is_reachable_from_the_docs_index() -> None:
    index = REPO / "docs" / "README.md"
    targets = {(index.parent / k.target.partition("#")[0]).resolve() for k in links(index)}
    missing = [
        d.name for d in (REPO / "docs").glob("*.md") if d != index and d.resolve() not in targets
    ]
    assert not missing, f"docs/README.md does not link {missing}"


def test_the_checker_catches_broken_links(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# Top\n\n## A `code` heading, with: punctuation\n")
    doc = tmp_path / "a.md"
    doc.write_text(
        "[ok](b.md#a-code-heading-with-punctuation) [bad](b.md#nope) ![img](missing.png)\n"
        "```\n[in code](nowhere.md)\n```\n[web](https://example.com) `[code](x.md)`\n"
    )
    results = {k.target: problem(k) for k in links(doc)}
    assert results == {
        "b.md#a-code-heading-with-punctuation": None,
        "b.md#nope": "no heading for #nope in b.md",
        "missing.png": "missing.png does not exist",
    }
