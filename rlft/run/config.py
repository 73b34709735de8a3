"""Where the Hydra configs live, and the resolvers they use."""

import re
from pathlib import Path

from omegaconf import OmegaConf

from rlft.assets import CONFIG_DIR, asset_path
from rlft.checks import required_prompts
from rlft.prompts import prompt_set
from rlft.rewards.multi import component_configs




def job_name(override_dirname: str, algorithm: str) -> str:
    """A sweep job's folder: its overrides, led by the algorithm when they do not name it
    (so that a PPO baseline with no overrides of its own is `algorithm=ppo`, never "")."""
    if re.search(r"(^|,)algorithm=", override_dirname):
        return override_dirname
    return f"algorithm={algorithm}" + (f",{override_dirname}" if override_dirname else "")


def config_groups(*leave_out: str) -> dict[str, list[str]]:
    """The choosable config groups under conf/ and their options, e.g. {"algorithm": ["ddpo_sf", ...]}.

    Left out: Hydra's own groups (`hydra/...`), folders named `base` (partial configs that the
    options beside them extend, never chosen on their own) and the groups named in `leave_out`."""
    root = Path(CONFIG_DIR)
    groups = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        group = folder.relative_to(root).as_posix()
        parts = group.split("/")
        if parts[0] == "hydra" or "base" in parts or group in leave_out:
            continue
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            groups[group] = options
    return groups


def format_config_groups(mode: str, *names: str) -> str:
    """`--help`'s list of groups (Hydra's own lists `base` folders as groups too): every group
    but `names` (mode `except`), or only `names` (mode `only`)."""
    if mode not in ("except", "only"):
        raise ValueError(f"config_groups: mode {mode!r} is invalid: use except or only")
    groups = config_groups(*names) if mode == "except" else {g: o for g, o in config_groups().items() if g in names}
    return "\n".join(f"{group}: {', '.join(options)}" for group, options in groups.items())


def tool_keys(app_name: str) -> str:
    """A tool's --help (conf/hydra/help/tool.yaml): the keys its primary config adds to the training
    config (`rlft sample` -> conf/sample.yaml's `ckpt_path` and `sample:`), as written, comments
    included: a YAML dump would drop the comments that say what each key does."""
    text = (Path(CONFIG_DIR) / f"{app_name.split()[-1]}.yaml").read_text()
    blocks = re.split(r"\n(?=\S)", text)  # top-level entries, each with its indented lines
    keep = [b for b in blocks if not b.startswith(("#", "defaults:", "hydra:"))]
    return "\n".join(keep).rstrip()


def per_process(total: int, devices) -> int:
    if not isinstance(devices, int) or devices < 1 or total % devices:
        raise ValueError(f"trainer.devices={devices!r}: this preset shares {total} micro-batches among the processes, and "
                         f"needs a number of devices that divides {total}")
    return total // devices


def tool_groups(*, _root_) -> str:
    """A tool's --help: the config groups it composes (those Hydra chose an option of)."""
    chosen = _root_.hydra.runtime.choices
    return format_config_groups("only", *(group for group in config_groups() if group in chosen))


# `${asset:digits16}` -> the path of a model directory shipped inside the package.
# `${len:${.queries_per_round}}`, `${mul:a,b}`: SEIKO's epochs from its round schedule.
# `${min:4,${policy.num_steps}}`: the default run's SDE window, cut to a shorter chain.
# `${job_name:${hydra:job.override_dirname},${algorithm.name}}`: see job_name.
# `${prompt_set:imagenet_animals}`: a prompt list shipped in rlft/prompts/.
# `${config_groups:except,pretrain}`: --help's list of groups (see format_config_groups).
# `${tool_keys:${hydra.help.app_name}}`, `${tool_groups:}`: a tool's --help (conf/hydra/help/tool.yaml).
# `${required_prompts:model.prompts.train,+experiment=NAME,/path/to/train.txt}`: a preset's prompts that
#   the user must give; composing without them fails naming the key (rlft.checks.required_prompts).
# `${per_process:64,${trainer.devices}}`: a count shared by the processes (a preset's micro-batches per
#   optimiser step: the same global batch on 1 GPU or 8).
# `${reward_configs:${.components},${.settings}}`: reward=multi's components, each an option of conf/reward/.
for name, resolver in (("asset", asset_path), ("len", len), ("mul", lambda a, b: a * b), ("min", min), ("job_name", job_name),
                       ("prompt_set", prompt_set), ("config_groups", format_config_groups), ("required_prompts", required_prompts),
                       ("tool_keys", tool_keys), ("per_process", per_process), ("tool_groups", tool_groups),
                       ("reward_configs", lambda names, settings: component_configs(names, settings, CONFIG_DIR))):
    if not OmegaConf.has_resolver(name):
        OmegaConf.register_new_resolver(name, resolver)


def check_config_dir() -> None:
    if not Path(CONFIG_DIR).is_dir():
        raise SystemExit(
            f"rlft: its Hydra configs are not at {CONFIG_DIR}. rlft runs from its repository: "
            "install it with `pip install -e .` in the clone (see README.md)."
        )
