"""MkDocs hook: the site's home page is README.md, its links made relative to docs/.

One front page, not two copies that drift apart: docs/index.md only names this hook."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    return re.sub(r"\]\(docs/", "](", README.read_text())
