"""A wrong setting, as the command line reports it: one line (what was wrong, the key to set, what is
valid) and exit code 2, no traceback; HYDRA_FULL_ERROR=1 shows the traceback, and a multirun's failing
job is left to Hydra's launcher."""

import contextlib
import os
import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from rlft.checks import wrong_setting


def leave_no_empty_run(output_dir: str) -> bool:
    """A run that failed before it trained leaves no directory: removed when it holds only Hydra's
    config and the log (a resumed run's directory has its checkpoints and is kept)."""
    run = Path(output_dir)
    if not run.is_dir() or any(p.name not in (".hydra", "cli.log") for p in run.iterdir()):
        return False
    shutil.rmtree(run)
    if run.parent.is_dir() and not any(run.parent.iterdir()):
        run.parent.rmdir()  # outputs/DATE/ when this was its only run
    return True


@contextlib.contextmanager
def one_line_errors(run_directory: bool = False):
    """Inside a Hydra task: a `ConfigError` or `MissingWeights` (or an error wrapping one) is printed
    as `rlft: <message>` and exits 2. With `run_directory` (the training app, whose runs get a
    directory of their own), a run directory left empty is removed, else named; the tools write
    into the working directory, which is never touched."""
    try:
        yield
    except Exception as error:
        wrong = wrong_setting(error)
        if wrong is None or os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        where = ""
        if run_directory:
            output_dir = HydraConfig.get().runtime.output_dir
            where = "" if leave_no_empty_run(output_dir) else f" (run directory: {output_dir})"
        print(f"rlft: {wrong}{where}", file=sys.stderr)
        sys.exit(2)
