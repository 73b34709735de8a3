"""Weights named by a Hugging Face hub id are looked for before anything loads: in the local cache
first, then with one short request to the hub, so that no network, a gated repository or a wrong id
fails in seconds naming the setting (`model.pretrained`, `reward.model_path`, ...) and what to do,
instead of after a minute of retries with an error about a missing `config.json`.

A local path (an existing one, or one that starts with `/`, `.` or `~`) is left to the loaders,
which check its files."""

from pathlib import Path

from rlft.checks import MissingWeights

HUB_TIMEOUT_S = 10.0


def is_hub_id(name: str) -> bool:
    return not (Path(name).expanduser().exists() or name.startswith(("/", ".", "~")))


def check_hub_weights(name: str, setting: str, filename: str = "config.json", revision: str | None = None) -> None:
    """`name` (the value of `setting`) is a local path, or a hub id that is in the local cache or
    that the hub will serve to this machine; else `MissingWeights` saying why and what to do.
    `filename`: a file every such repository has (model_index.json for a diffusers pipeline)."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    if not is_hub_id(name):
        return
    if isinstance(huggingface_hub.try_to_load_from_cache(name, filename, revision=revision), str):
        return  # downloaded before: from_pretrained reads the cache
    fix = (f"download it where there is network (`hf download {name}`) and copy the Hugging Face cache here, "
           f"or set {setting} to a local directory")
    if constants.HF_HUB_OFFLINE:
        raise MissingWeights(f"{setting}={name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {fix}")
    api = huggingface_hub.HfApi()
    try:
        api.model_info(name, revision=revision, timeout=HUB_TIMEOUT_S)
        api.auth_check(name)
    except errors.GatedRepoError:
        raise MissingWeights(f"{setting}={name!r} is a gated repository and this machine's token has no access: accept "
                             f"its licence at https://huggingface.co/{name} and log in (`hf auth login`, or HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise MissingWeights(f"{setting}={name!r} is neither a local directory nor a repository on the Hugging Face hub "
                             f"(or a private one this machine's token cannot see): check the name") from None
    except errors.RevisionNotFoundError:
        raise MissingWeights(f"{setting}={name!r} has no revision {revision!r} on the hub") from None
    except errors.HfHubHTTPError:
        raise  # another answer from the hub (a server error): its own message says more
    except Exception as error:  # no network: DNS, connection refused, timeout (httpx's errors)
        raise MissingWeights(f"{setting}={name!r} is not in the local Hugging Face cache and the hub cannot be reached "
                             f"({type(error).__name__}: {error}): {fix}") from None
