"""The manual's configuration reference, generated from `conf/`: every primary config, group,
option and key with its default and its comment.

    python -m rlft.tools.config_reference            # rewrite docs/reference/configuration.md
    python -m rlft.tools.config_reference --check    # exit 1 if that page differs from conf/

The values come from OmegaConf (what Hydra composes); the comments from the YAML text, which no
YAML loader keeps: a key's comment is the full-line comments right above it plus the one after
its value. `tests/test_config_reference.py` fails when the committed page is out of date."""

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from rlft.run.config import CONFIG_DIR, config_groups

PAGE = Path(CONFIG_DIR).parent / "docs" / "reference" / "configuration.md"
KEY = re.compile(r"^([A-Za-z_$][\w.@/${}:-]*):(?:\s+|$)(.*)$")
PRIMARY = {  # the configs an entry point composes, and the command that composes it
    "config.yaml": "rlft (python -m rlft)",
    "sample.yaml": "rlft sample",
    "benchmark.yaml": "rlft benchmark",
    "speed.yaml": "rlft speed",
    "memory.yaml": "rlft memory",
    "pretraining.yaml": "rlft pretrain",
    "serve.yaml": "rlft serve",
}


@dataclass
class Key:
    path: str
    raw: str  # the value as written on the key's line ("" for a block below it)
    comment: str


def split_comment(text: str) -> tuple[str, str]:
    """`value  # comment` -> (value, comment); a # inside quotes is part of the value."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1:].strip()
    return text.rstrip(), ""


def scan(text: str) -> tuple[str, list[Key]]:
    """The file's leading comment, and each mapping key in order with its comment."""
    header, keys, pending, stack = [], [], [], []
    skip_deeper_than = None  # inside a block scalar or a block list: lines indented past this
    seen_key = False
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than or (indent == skip_deeper_than and stripped.startswith("- ")):
                continue
            skip_deeper_than = None
        if not stripped:
            if not seen_key and pending:
                header, pending = header + pending, []
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped[1:].strip())
            continue
        if stripped.startswith("- "):  # a block list's item: the list's key shows its whole value
            skip_deeper_than = stack[-1][0] if stack else 0
            pending = []
            continue
        match = KEY.match(stripped)
        if not match:  # the continuation of a flow list or string
            continue
        if not seen_key:  # a file's first comment block describes the file, not its first key
            seen_key = True
            if not header:
                header, pending = pending, []
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = split_comment(match.group(2))
        path = ".".join([k for _, k in stack] + [match.group(1)])
        keys.append(Key(path, value, " ".join(pending + ([comment] if comment else []))))
        pending = []
        stack.append((indent, match.group(1)))
        if value.startswith(("|", ">")):
            skip_deeper_than = indent
    return " ".join(header).strip(), keys


def render(value) -> str:
    """A value in YAML's flow style, interpolations left as written."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and (value == "" or re.search(r"[,\s\[\]{}]", value)):
        return f'"{value}"'
    return str(value)


def balanced(raw: str) -> bool:
    return raw.count("[") == raw.count("]") and raw.count("{") == raw.count("}")


def slug(title: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify)."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", title).strip().lower())


def code(text: str) -> str:
    """A code span safe in a table cell (a | would end the cell)."""
    return "`" + text.replace("|", "\\|").replace("\n", " ") + "`"


def cell(text: str) -> str:
    """Prose safe in a table cell: no column break, no HTML tag, no reference link."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("[", "\\[").replace("\n", " ")


def option_table(path: Path) -> tuple[str, str]:
    """(the file's description, a markdown table of its keys)."""
    text = path.read_text()
    header, keys = scan(text)
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    rows = []
    defaults = []
    for key in keys:
        if key.path == "defaults":
            defaults = [render(d) for d in config["defaults"]]
            continue
        node = config
        for part in key.path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        is_mapping = isinstance(node, dict) and not key.raw
        if is_mapping and not key.comment:
            continue  # its keys have rows of their own
        if is_mapping:
            value = "…"
        elif key.raw and not key.raw.startswith(("|", ">")) and balanced(key.raw):
            value = key.raw
        elif key.raw.startswith(("|", ">")):
            value = "(text)"
        else:
            value = render(node)
        rows.append(f"| {code(key.path)} | {code(value)} | {cell(key.comment)} |")
    lines = []
    if defaults:
        lines.append("Defaults list: " + ", ".join(code(d) for d in defaults) + "\n")
    if rows:
        lines += ["| key | default | comment |", "|---|---|---|", *rows]
    return header, "\n".join(lines)


def section(title: str, path: Path, level: str) -> str:
    header, table = option_table(path)
    rel = path.relative_to(Path(CONFIG_DIR).parent).as_posix()
    parts = [f"{level} {title}", "", f"`{rel}`" + (f": {cell(header)}" if header else ""), ""]
    if table:
        parts += [table, ""]
    return "\n".join(parts)


def generate() -> str:
    root = Path(CONFIG_DIR)
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m rlft.tools.config_reference` from conf/; do not edit by hand. -->",
        "",
        "Every config file under `conf/`, with each key's default as written and its comment. Generated",
        "from `conf/` by `python -m rlft.tools.config_reference`; `tests/test_config_reference.py` fails",
        "when this page is out of date. How the groups fit together: [Configuration](../configuration.md).",
        "A value such as `${model.num_steps}` is an interpolation: it takes that key's value.",
        "",
        "## Primary configs",
        "",
    ]
    for name, command in PRIMARY.items():
        out.append(section(f"`{name}`: `{command}`", root / name, "###"))
    out += ["## Groups", ""]
    groups = config_groups()
    for hydra_group in ("launcher", "help"):  # rlft's own options of Hydra's groups
        groups[f"hydra/{hydra_group}"] = sorted(f.stem for f in (root / "hydra" / hydra_group).glob("*.yaml"))
    partials = sorted(p for p in root.rglob("base/*.yaml"))
    for group, options in groups.items():
        out += [f"### {group}", "", "Options: " + ", ".join(f"[`{o}`](#{slug(f'{group}={o}')})" for o in options), ""]
        for partial in (p for p in partials if p.parent.parent.relative_to(root).as_posix() == group):
            out.append(section(f"{group}/base/{partial.stem}", partial, "####"))
        for option in options:
            out.append(section(f"{group}={option}", root / group / f"{option}.yaml", "####"))
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlft.tools.config_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from conf/, write nothing")
    parser.add_argument("--out", default=str(PAGE))
    args = parser.parse_args(argv)
    page, text = Path(args.out), generate()
    if args.check:
        if not page.is_file() or page.read_text() != text:
            sys.exit(f"{page} is out of date: run python -m rlft.tools.config_reference")
        print(f"{page} matches conf/")
        return
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
