"""The manual's pages that tests check the program against (docs/)."""

from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text()


def undocumented_metrics(tags) -> list[str]:
    """The logged tags that docs/reference/metrics.md does not name."""
    metrics = page("reference/metrics.md")
    return [tag for tag in tags if f"`{tag}`" not in metrics]
