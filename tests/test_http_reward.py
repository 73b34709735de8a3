"""reward=http against a local server on 127.0.0.1: retries with backoff on a flaky
service, a clear error naming the URL when it is down."""

import base64
import io
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image

from rlft.rewards.http import HttpReward, RewardServiceError
from rlft.run.train import build
from tests.conftest import save_tiny_model
from tests.test_config import compose_cfg


class FlakyRewardServer(ThreadingHTTPServer):
    """Answers 503 to its first `failures` requests, then the mean brightness of each image."""

    def __init__(self, failures: int):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures, self.requests = failures, 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/reward"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests += 1
        if self.server.requests <= self.server.failures:
            self.send_response(503)
            self.end_headers()
            return
        rewards = [float(np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))).mean() / 255) for b in body["images"]]
        answer = json.dumps({"rewards": rewards}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/reward"  # nothing listens once closed


def test_retries_a_flaky_service_then_scores(caplog):
    server = FlakyRewardServer(failures=2)
    images = torch.stack([torch.full((1, 8, 8), 0.25), torch.full((1, 8, 8), 1.0)])
    with caplog.at_level(logging.WARNING, logger="rlft.rewards.http"):
        rewards = HttpReward(server.url, timeout_s=5, retries=3, backoff_s=0.01)(images, ["a", "b"])
    assert server.requests == 3
    assert torch.allclose(rewards, torch.tensor([64 / 255, 1.0]), atol=1e-6)  # PNG is lossless: 0.25 -> 64
    retries = [r.message for r in caplog.records if "HTTP 503" in r.message]
    assert len(retries) == 2 and "retry 1 of 3" in retries[0] and "retry 2 of 3" in retries[1]
    server.shutdown()


def test_gives_up_after_the_retries_with_the_url():
    server = FlakyRewardServer(failures=10)
    with pytest.raises(RewardServiceError, match=f"reward service at {server.url} failed .*after up to 2 retries"):
        HttpReward(server.url, timeout_s=5, retries=2, backoff_s=0)(torch.zeros(1, 1, 8, 8), ["a"])
    assert server.requests == 3  # the first try and 2 retries
    server.shutdown()


def http_run(tmp_path, url: str, *overrides: str):
    """A tiny PPO run (module, data, trainer) scored by the service at `url`."""
    model_dir = save_tiny_model(tmp_path / "model")
    cfg = compose_cfg([f"model.pretrained={model_dir}", "reward=http", f"reward.url={url}", "reward.backoff_s=0",
                       "trainer.max_epochs=1", "algorithm.sample_batch_size=4", "algorithm.train_batch_size=4",
                       "policy.num_steps=2", *overrides], output_dir=str(tmp_path / "run"))
    return build(cfg)


def test_a_run_against_a_service_that_is_down_fails_naming_the_url(tmp_path):
    url = closed_port_url()
    module, data, trainer = http_run(tmp_path, url, "reward.retries=1", "data.samples_per_epoch=4")
    with pytest.raises(RewardServiceError, match=f"reward service at {url} failed"):
        trainer.fit(module, datamodule=data)


def test_a_run_scores_through_a_flaky_service(tmp_path):
    server = FlakyRewardServer(failures=1)
    module, data, trainer = http_run(tmp_path, server.url, "data.samples_per_epoch=8",
                                     "algorithm.evaluation.samples_per_prompt=1")
    trainer.fit(module, datamodule=data)
    assert module.oracle_queries == 8
    assert server.requests == 1 + 2 + 1  # one 503 retried, 2 sampled chunks, 1 evaluation
    server.shutdown()
