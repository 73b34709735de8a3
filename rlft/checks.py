"""How a config is checked before anything is built: `ConfigError` and `check`, imported by the
class that each config names (its `check_config`) and by the run's generic `validate`
(`rlft.run.validation`). Below every module that checks a setting, importing nothing of rlft."""

import contextlib

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A setting that is wrong, with the key to change and what is valid."""


class MissingWeights(FileNotFoundError):
    """A setting names weights that cannot be read (no such directory, a missing component, a
    failed load), with the key to change and what was expected."""


def check(ok: bool, setting: str, value, valid: str) -> None:
    """Fails with "`setting`=`value` is invalid: `valid`" unless `ok`."""
    if not ok:
        raise ConfigError(f"{setting}={value!r} is invalid: {valid}")


def set_by_user(key: str) -> bool:
    """Whether the command line set `key` (Hydra's task overrides), so that an error about two
    settings that do not fit names the one the user chose; False outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(o.lstrip("+~").split("=")[0] == key for o in HydraConfig.get().overrides.task)


def wrong_setting(error: BaseException | None) -> Exception | None:
    """The `ConfigError` or `MissingWeights` that `error` is or wraps (Hydra's InstantiationException
    wraps a constructor's; OmegaConf's InterpolationResolutionError a resolver's), else None."""
    while error is not None:
        if isinstance(error, (ConfigError, MissingWeights)):
            return error
        error = error.__cause__ or error.__context__
    return None


def required_prompts(key: str, preset: str, path: str):
    """The resolver `${required_prompts:KEY,PRESET,PATH}`: a preset's prompt list that the user must
    give (a `???` would not replace the model config's prompts when merged over them)."""
    raise ConfigError(f"{key} is required by {preset}: give its prompt file, {key}='${{prompt_set:{path}}}'")


@contextlib.contextmanager
def as_config_error(prefix: str = ""):
    """A ValueError raised by a check shared with the code that runs (a constructor's own) becomes
    a ConfigError, its message kept (after `prefix`)."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{prefix}{error}") from None


def target_class(node: DictConfig):
    """The class (or function) a config node's `_target_` names."""
    return get_object(node._target_)


def check_node(cfg: DictConfig, node: DictConfig, where: str) -> None:
    """Runs the `check_config(cfg, node, where)` of the class `node` names, if it has one: the class
    owns the checks of its settings (`cfg` is the whole config, for rules across settings)."""
    try:
        target = target_class(node)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{where}._target_={node._target_!r} is invalid: it cannot be imported ({error})") from None
    check_config = getattr(target, "check_config", None)
    if check_config is not None:
        check_config(cfg, node, where)


def algorithm_node(cfg: DictConfig) -> DictConfig:
    """The node that builds the run's algorithm (its LightningModule): `algorithm`, whose keys are
    the constructor's arguments but for the class's `config_only_keys`."""
    return cfg.algorithm


def constructor_node(node: DictConfig) -> DictConfig:
    """`node`, resolved, without the keys its class declares are for the other configs only
    (`config_only_keys`: an algorithm's name, epochs and learning rate)."""
    skip = set(getattr(target_class(node), "config_only_keys", ()))
    resolved = OmegaConf.to_container(node, resolve=True)  # interpolations read where they stand
    return OmegaConf.create({k: v for k, v in resolved.items() if k not in skip})


def algorithm_class(cfg: DictConfig):
    """The run's algorithm: its class answers what other settings may ask of it (e.g. whether it
    needs the sampler's stochastic steps)."""
    return target_class(algorithm_node(cfg))


def checked_by_building(cfg: DictConfig, node: DictConfig, where: str) -> None:
    """The `check_config` of a class whose constructor checks its settings and costs nothing to
    run (no weights, no network): it is built once at composition."""
    instantiate(node)
