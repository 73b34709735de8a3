"""The manual's pages that tests check the program against (docs/)."""

from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text()


def undocumented_metrics(tags, names=()) -> list[str]:
    """The logged tags that docs/reference/metrics.md does not name; `names` (rewards of
    reward=multi or evaluation.rewards) are documented as `reward/<name>`, `eval/<name>`."""
    metrics = page("reference/metrics.md")
    generic = lambda tag: "/".join("<name>" if part in names else part for part in tag.split("/"))
    return [tag for tag in tags if f"`{tag}`" not in metrics and f"`{generic(tag)}`" not in metrics]
