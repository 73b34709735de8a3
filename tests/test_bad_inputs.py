"""docs/reliability.md's table of bad inputs: each row's input, given on the command line, fails before
any work with the message the manual quotes (part of it, whitespace normalised)."""

import re

import pytest

from rlft.run.train import build, resume_path
from tests.manual import page
from tests.test_config import compose_cfg

def readme_rows() -> list[tuple[str, str]]:
    text = page("reliability.md")
    table = text.split("<!-- bad-inputs -->")[1].split("<!-- /bad-inputs -->")[0]
    return re.findall(r"^\| `([^`]+)` \| (.+?) \|$", table, flags=re.M)


def normalise(text: str) -> str:
    return " ".join(text.replace("`", "").split())


def first_error(overrides: list[str], tmp_path) -> str:
    try:
        cfg = compose_cfg(overrides, output_dir=str(tmp_path))
        module, data, trainer = build(cfg)
        resume_path(cfg.ckpt_path, trainer)  # what train() does next, before any epoch
    except Exception as error:  # composition, validation or construction: whichever comes first
        return normalise(str(error))
    return "(no error)"


def test_the_table_is_there():
    assert len(readme_rows()) >= 15


@pytest.mark.parametrize("given,message", readme_rows())
def test_bad_input_fails_with_the_documented_message(given, message, tmp_path):
    actual = first_error(given.split(), tmp_path)
    # "…" in the manual stands for text left out; the parts around it must appear in order.
    pattern = ".*".join(re.escape(part.strip()) for part in normalise(message).split("…"))
    assert re.search(pattern, actual), f"{given}: docs/reliability.md says {message!r}, the program says {actual!r}"
