"""`rlft serve`: a reward served over the JSON protocol of reward=http, started as a user starts
it (a process of its own on 127.0.0.1): health, answers equal to the reward in-process, malformed
requests answered 4xx with a message, a non-finite reward sent as null, and a training run whose
reward=http talks to it logging what the same run logs with the reward in-process."""

import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch

from rlft.rewards.http import HttpReward, png_base64
from rlft.rewards.jpeg import JpegCompressibility
from rlft.tools.serve import create_app, decode_images
from rlft.tools.tensorboard import read_scalars
from tests.conftest import save_tiny_model
from tests.test_end_to_end import TINY_RUN, run_rlft

ROOT = Path(__file__).parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """`rlft serve reward=compressibility` in its own process, until the module's tests end."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "rlft", "serve", "reward=compressibility", f"serve.port={port}",
                                "serve.max_batch_size=3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(f"{url}/health", timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
        assert process.poll() is None, process.stdout.read()
    else:
        process.kill()
        pytest.fail("rlft serve did not answer /health within 30 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_health_names_the_reward(server):
    assert requests.get(f"{server}/health", timeout=5).json() == {"status": "ok", "reward": "JpegCompressibility"}


@pytest.mark.parametrize("channels", [1, 3])
def test_answers_equal_the_reward_in_process_over_several_batches(server, channels):
    images = torch.rand(7, channels, 16, 16, generator=torch.Generator().manual_seed(channels))  # 3 + 3 + 1
    prompts = [f"prompt {i}" for i in range(7)]
    served = HttpReward(f"{server}/reward", retries=0)(images, prompts)
    assert torch.equal(served, JpegCompressibility()(images, prompts))  # PNG is lossless at 8 bits


@pytest.mark.parametrize("payload,status,message", [
    ({"prompts": ["a"]}, 422, "images"),
    ({"prompts": ["a", "b"], "images": ["aGVsbG8="]}, 400, "1 images but 2 prompts"),
    ({"prompts": ["a"], "images": ["not base64!"]}, 400, "images[0] is not a base64 PNG or JPEG image"),
    ({"prompts": ["a"], "images": [base64.b64encode(b"hello").decode()]}, 400, "images[0] is not a base64 PNG"),
    ({"prompts": ["a", "b"], "images": png_base64(torch.rand(1, 1, 8, 8)) + png_base64(torch.rand(1, 1, 9, 9))},
     400, "must share a size"),
])
def test_malformed_requests_are_answered_4xx_with_what_was_wrong(server, payload, status, message):
    answer = requests.post(f"{server}/reward", json=payload, timeout=10)
    assert answer.status_code == status and message in answer.text


def test_a_pickle_is_no_request(server):
    answer = requests.post(f"{server}/reward", data=b"\x80\x04\x95", headers={"Content-Type": "application/octet-stream"}, timeout=10)
    assert answer.status_code == 422


def test_a_non_finite_reward_is_sent_as_null_and_read_back_as_nan():
    from fastapi.testclient import TestClient

    app = create_app(lambda images, prompts: torch.tensor([1.0, float("nan")]), max_batch_size=8)
    answer = TestClient(app).post("/reward", json={"prompts": ["a", "b"], "images": png_base64(torch.rand(2, 3, 8, 8))})
    assert answer.status_code == 200 and answer.json() == {"rewards": [1.0, None]}


def test_too_many_images_are_refused_with_413():
    from fastapi.testclient import TestClient

    app = create_app(JpegCompressibility(), max_images=2)
    answer = TestClient(app).post("/reward", json={"prompts": ["a"] * 3, "images": png_base64(torch.rand(3, 1, 8, 8))})
    assert answer.status_code == 413 and "at most 2 (serve.max_images)" in answer.text


def test_decoding_keeps_grayscale_and_colour():
    gray, colour = torch.rand(2, 1, 8, 8), torch.rand(2, 3, 8, 8)
    assert torch.equal(decode_images(png_base64(gray)), (gray * 255).round() / 255)
    assert torch.equal(decode_images(png_base64(colour)), (colour * 255).round() / 255)


def test_a_run_on_the_served_reward_logs_what_the_run_in_process_logs(server, tmp_path):
    model = save_tiny_model(tmp_path / "model")
    common = [f"model.pretrained={model}", *TINY_RUN]
    run_rlft(*common, f"hydra.run.dir={tmp_path / 'local'}", cwd=tmp_path)
    run_rlft(*common, "reward=http", f"reward.url={server}/reward", f"hydra.run.dir={tmp_path / 'served'}", cwd=tmp_path)
    local, served = read_scalars(tmp_path / "local"), read_scalars(tmp_path / "served")
    for tag in ("reward/mean", "reward/std", "eval/oracle_reward", "train/loss"):
        assert local[tag] == served[tag], tag
