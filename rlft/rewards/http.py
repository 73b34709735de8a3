"""A reward served over HTTP, as ddpo-pytorch scores with its LLaVA server: the reward model
runs in another process or on another machine (its own GPU, its own environment).

Protocol (JSON, no pickles): POST `{"prompts": [str], "images": [base64 PNG]}` to `url`,
answer `{"rewards": [float]}` with one reward per image, in order.
"""

import base64
import io
import logging

import requests
import torch
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from rlft.rewards.jpeg import to_pil

log = logging.getLogger(__name__)


class RewardServiceError(RuntimeError):
    pass


class _LoggedRetry(Retry):
    """urllib3's Retry, saying each retry out loud: a flaky service should be visible."""

    def increment(self, method=None, url=None, response=None, error=None, *args, **kwargs):
        new = super().increment(method, url, response, error, *args, **kwargs)
        why = f"HTTP {response.status}" if response is not None else repr(error)
        log.warning(f"reward service {url}: {why}; retry {len(new.history)} of {self.total + len(self.history)}")
        return new


def png_base64(images: torch.Tensor) -> list[str]:
    encoded = []
    for image in to_pil(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


class HttpReward:
    def __init__(self, url: str, timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0,
                 token: str | None = None):
        for name, value, ok, valid in (("timeout_s", timeout_s, timeout_s > 0, "> 0"),
                                       ("retries", retries, retries >= 0, ">= 0"),
                                       ("backoff_s", backoff_s, backoff_s >= 0, ">= 0")):
            if not ok:
                raise ValueError(f"reward.{name}={value} is invalid: must be {valid}")
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        # Connection errors, timeouts and 429/5xx answers are retried with exponential
        # backoff (backoff_s, 2 * backoff_s, ...); anything else fails at once.
        retry = _LoggedRetry(
            total=retries, backoff_factor=backoff_s, status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=None, raise_on_status=False,
        )
        self.session = requests.Session()
        if token:  # `rlft serve` with serve.token answers only requests that carry it
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        payload = {"prompts": list(prompts), "images": png_base64(images)}
        try:
            response = self.session.post(self.url, json=payload, timeout=self.timeout_s)
            response.raise_for_status()
            rewards = response.json()["rewards"]
        except (requests.RequestException, ValueError, KeyError) as error:
            raise RewardServiceError(
                f"the reward service at {self.url} failed (after up to {self.retries} retries, "
                f"timeout {self.timeout_s}s): {error}"
            ) from error
        if len(rewards) != len(prompts):
            raise RewardServiceError(f"the reward service at {self.url} answered {len(rewards)} rewards for {len(prompts)} images")
        # None (JSON null) becomes NaN: counted and skipped like any non-finite reward.
        return torch.tensor([float("nan") if r is None else float(r) for r in rewards], dtype=torch.float32)
