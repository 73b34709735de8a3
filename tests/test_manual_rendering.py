"""The manual renders as written: MkDocs' Markdown (Python-Markdown) reads a list that starts right
under a paragraph line as that paragraph's text, and a blank line inside a table ends the table (the
rows after it show as raw text). GitHub renders both, so neither shows until the site is built."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = sorted([*ROOT.glob("docs/**/*.md"), *ROOT.glob("experiments/**/*.md"), ROOT / "README.md"])
LIST_ITEM = re.compile(r"^(?:[-*+]|\d+\.)\s+\S")
TABLE_SEPARATOR = re.compile(r"^\|\s*:?-{3,}")


def rendering_defects(text: str) -> list[str]:
    """'line N: ...' for each list without a blank line before it and each table split by a blank line."""
    lines, found, fenced = text.split("\n"), [], False
    for i, line in enumerate(lines):
        if line.strip().startswith("```"):
            fenced = not fenced
        if fenced or line.strip().startswith("```") or i == 0:
            continue
        before = lines[i - 1]
        if LIST_ITEM.match(line) and before.strip() and not LIST_ITEM.match(before.lstrip()) \
                and not before.startswith((" ", "\t", "|", "#", ">")):
            found.append(f"line {i + 1}: a list without a blank line before it")
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if line.startswith("|") and not before.strip() and i >= 2 and lines[i - 2].startswith("|") \
                and not TABLE_SEPARATOR.match(following):
            found.append(f"line {i + 1}: a table split by a blank line")
    return found


def test_the_checker_finds_both_defects():
    assert rendering_defects("Text:\n- a\n- b\n") == ["line 2: a list without a blank line before it"]
    assert rendering_defects("| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n") == ["line 5: a table split by a blank line"]
    assert rendering_defects("Text:\n\n- a\n- b\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n| c | d |\n|---|---|\n") == []
    assert rendering_defects("```\ntext\n- not a list\n```\n") == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_page_renders_as_written(page):
    assert not rendering_defects(page.read_text()), rendering_defects(page.read_text())
