"""Weights named by a hub id are looked for before anything loads: cached ones pass without a request;
no network, a gated repository, a wrong id or HF_HUB_OFFLINE without the cache fail at once, naming the
setting and what to do."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx  # huggingface_hub 2.x talks to the hub through httpx2
import huggingface_hub
import pytest
from huggingface_hub import errors

from rlft.checks import MissingWeights
from rlft.models.hub import check_hub_weights


class Hub:
    """HfApi's two calls, answering as told (and counting them)."""

    def __init__(self, error=None):
        self.error, self.calls = error, 0

    def model_info(self, name, revision=None, timeout=None):
        self.calls += 1
        assert timeout is not None  # one short request, never the default wait
        if self.error is not None:
            raise self.error

    def auth_check(self, name):
        pass


@pytest.fixture
def hub(monkeypatch):
    def install(error=None, cached=False):
        api = Hub(error)
        monkeypatch.setattr(huggingface_hub, "HfApi", lambda: api)
        monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/file" if cached else None)
        return api
    return install


def http_error(cls, message="x"):
    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/a/b"))
    return cls(message, response=response)


def test_a_cached_or_local_model_needs_no_request(hub, tmp_path):
    api = hub(cached=True)
    check_hub_weights("org/cached", "reward.model_path")
    check_hub_weights(str(tmp_path), "model.pretrained")  # a local directory: the loader checks its files
    check_hub_weights("/no/such/dir", "model.pretrained")
    assert api.calls == 0


@pytest.mark.parametrize("error, says", [
    (httpx.ConnectError("[Errno -2] Name or service not known"), "is not in the local Hugging Face cache and the hub cannot be reached"),
    (None, None),
])
def test_no_network_fails_naming_the_setting(hub, error, says):
    api = hub(error)
    if says is None:
        check_hub_weights("org/reachable", "reward.model_path")  # served by the hub: left to from_pretrained
        assert api.calls == 1
        return
    with pytest.raises(MissingWeights, match=f"^reward.model_path='org/model' {says}.*hf download org/model"):
        check_hub_weights("org/model", "reward.model_path")


def test_a_gated_or_unknown_repository_says_so(hub):
    hub(http_error(errors.GatedRepoError))
    with pytest.raises(MissingWeights, match=r"^model.pretrained='black-forest-labs/FLUX.1-dev' is a gated repository.*hf auth login"):
        check_hub_weights("black-forest-labs/FLUX.1-dev", "model.pretrained", "model_index.json")
    hub(http_error(errors.RepositoryNotFoundError))
    with pytest.raises(MissingWeights, match=r"^reward.clip_path='org/typo' is neither a local directory nor a repository"):
        check_hub_weights("org/typo", "reward.clip_path")


def test_offline_without_the_cache_needs_no_request(hub, monkeypatch):
    api = hub()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingWeights, match="HF_HUB_OFFLINE is set"):
        check_hub_weights("org/model", "reward.model_path")
    assert api.calls == 0


@pytest.mark.parametrize("args, setting", [
    (["model=flux_dev"], "model.pretrained='black-forest-labs/FLUX.1-dev'"),
    (["reward=pickscore"], "reward.model_path='yuvalkirstain/PickScore_v1'"),
    (["evaluation.rewards=[clipscore]"], "evaluation.settings.clipscore.model_path='openai/clip-vit-large-patch14'"),
    (["benchmark", "reward=pickscore"], "reward.model_path='yuvalkirstain/PickScore_v1'"),  # before the model loads
])
def test_the_command_line_fails_in_seconds_before_loading(tmp_path, args, setting):
    """An empty cache, offline (so that a machine with network downloads nothing): the run stops before
    loading anything, naming the setting (the hub's own answers are tested above)."""
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    start = time.perf_counter()
    run_dir = [] if args[0] == "benchmark" else [f"hydra.run.dir={tmp_path / 'out' / 'run'}"]  # a tool writes in its cwd
    result = subprocess.run([sys.executable, "-m", "rlft", *args, *run_dir],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"rlft: {setting} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    assert time.perf_counter() - start < 60  # no minute of retries (the check itself is one request)
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()
