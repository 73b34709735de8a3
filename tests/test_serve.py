"""`rlft serve`: a reward served over the JSON protocol of reward=http, started as a user starts
it (a process of its own on 127.0.0.1): health, answers equal to the reward in-process, malformed
requests answered 4xx with a message, a non-finite reward sent as null, and a training run whose
reward=http talks to it logging what the same run logs with the reward in-process."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from fastapi import HTTPException
from PIL import Image

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


def big_header_png(width: int, height: int) -> str:
    """A PNG whose header says width x height, with a few bytes of pixels: decoding it would fail (or,
    were it whole, take width x height bytes); the header alone says how large it is."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()[:200]).decode()


def test_an_image_above_max_pixels_is_refused_from_its_header():
    with pytest.raises(HTTPException) as refused:
        decode_images([big_header_png(3000, 3000)], max_pixels=4096 * 4096 // 2)
    assert refused.value.status_code == 413 and "3000 x 3000 = 9000000 pixels" in refused.value.detail
    assert "serve.max_pixels" in refused.value.detail
    with pytest.raises(HTTPException) as truncated:  # under the limit, the same image is decoded, and is broken
        decode_images([big_header_png(3000, 3000)], max_pixels=10**7)
    assert truncated.value.status_code == 400


def test_a_body_above_max_request_bytes_is_refused_before_it_is_read():
    from fastapi.testclient import TestClient

    client = TestClient(create_app(JpegCompressibility(), max_request_bytes=2000))
    small = {"prompts": ["a"], "images": png_base64(torch.rand(1, 1, 8, 8))}
    assert client.post("/reward", json=small).status_code == 200
    large = {"prompts": ["a"] * 40, "images": png_base64(torch.rand(40, 1, 8, 8))}
    answer = client.post("/reward", json=large)  # with a Content-Length
    assert answer.status_code == 413 and "reads at most 2000 (serve.max_request_mb)" in answer.text
    body = json.dumps(large).encode()
    streamed = client.post("/reward", content=(body[i : i + 500] for i in range(0, len(body), 500)),
                           headers={"Content-Type": "application/json"})  # chunked: no Content-Length
    assert streamed.status_code == 413


def test_with_a_token_only_requests_that_carry_it_are_answered():
    from fastapi.testclient import TestClient

    client = TestClient(create_app(JpegCompressibility(), token="s3cret"))
    payload = {"prompts": ["a"], "images": png_base64(torch.rand(1, 1, 8, 8))}
    assert client.post("/reward", json=payload).status_code == 401
    assert client.post("/reward", json=payload, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/reward", json=payload, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert HttpReward("http://127.0.0.1:1/reward", token="s3cret").session.headers["Authorization"] == "Bearer s3cret"


def test_the_token_is_kept_out_of_the_logged_config():
    from rlft.run.train import without_secrets

    assert without_secrets({"reward": {"url": "u", "token": "s3cret"}, "serve": [{"token": None}]}) == \
        {"reward": {"url": "u", "token": "<set>"}, "serve": [{"token": None}]}
