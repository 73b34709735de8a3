"""docs/reference/configuration.md is generated from conf/ and must match it; the comment
scanner it is made with reads keys, defaults and comments as they are written."""

from pathlib import Path

from rlft.run.config import CONFIG_DIR, config_groups
from rlft.tools.config_reference import PAGE, generate, scan, split_comment

YAML = """# What this file is,
# over two lines.

# above a
a: 1e-4  # after a
b:
  # above c
  c: "x # not a comment"  # after c
  d: [1, 2]
e:
  - one  # an item
  - two: 2
    three: 3
f: |
  g: not a key
h: null
"""


def test_the_committed_page_matches_conf():
    assert PAGE.read_text() == generate(), "run: python -m rlft.tools.config_reference"


def test_scan_reads_keys_defaults_and_comments():
    header, keys = scan(YAML)
    assert header == "What this file is, over two lines."
    assert [(k.path, k.raw, k.comment) for k in keys] == [
        ("a", "1e-4", "above a after a"),
        ("b", "", ""),
        ("b.c", '"x # not a comment"', "above c after c"),
        ("b.d", "[1, 2]", ""),
        ("e", "", ""),
        ("f", "|", ""),
        ("h", "null", ""),
    ]
    assert split_comment("'#1' # two") == ("'#1'", "two")


def test_every_option_and_key_is_on_the_page():
    page = generate()
    for group, options in config_groups().items():
        for option in options:
            assert f"#### {group}={option}\n" in page, (group, option)
    assert "algorithm/base/online" in page  # the shared keys of the online algorithms
    ppo = page.split("#### algorithm=ppo\n")[1].split("####")[0]
    assert "| `clip_range` | `1e-4` |" in ppo  # as written, not 0.0001
    assert "| `max_log_ratio` | `20.0` | log-ratios above this are capped" in ppo
    # a key of every file: the page has as many sections as conf/ has YAML files
    assert page.count("\n`conf/") == len(list(Path(CONFIG_DIR).rglob("*.yaml")))
