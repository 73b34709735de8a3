"""reward=vlm_judge against a small OpenAI-compatible server that the tests start on 127.0.0.1:
UnifiedReward's Final Score and the yes/no probability parsed as the public code does, a reply
with no score becoming NaN (counted and named, never 0), 429 and 5xx retried, a timeout, a server
that is down, and runs through the CLI."""

import base64
import io
import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from rlft.rewards.vlm_judge import UNIFIED_REWARD_QUESTION, VlmJudge, final_score, yes_probability
from rlft.run.validation import ConfigError, validate
from rlft.tools.tensorboard import read_scalars
from tests.test_config import compose_cfg
from tests.test_end_to_end import run_rlft
from tests.test_http_reward import closed_port_url


class FakeJudge(ThreadingHTTPServer):
    """/v1/chat/completions, answering by a word of the prompt: `good` (Final Score: 4, or
    logp(Yes) = log 0.6, logp(No) = log 0.2), `garbage` (no score), `slow` (answers after 3 s),
    `busy` (429 to its first 2 requests), `broken` (500 always). Keeps every request."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests, self.busy_left, self.lock = [], 2, threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def completion(content: str | None, top_logprobs: dict[str, float] | None) -> dict:
    logprobs = None
    if top_logprobs is not None:
        top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in top_logprobs.items()]
        logprobs = {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"], "bytes": None, "top_logprobs": top}]}
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                         "message": {"role": "assistant", "content": content}}]}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
        text = body["messages"][0]["content"][1]["text"]
        if "broken" in text:
            return self.answer(500, {"error": {"message": "internal error"}})
        if "busy" in text:
            with self.server.lock:
                busy = self.server.busy_left > 0
                self.server.busy_left -= busy
            if busy:
                return self.answer(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"})
        if "slow" in text:
            time.sleep(3)
        logprobs = body.get("logprobs")
        if "garbage" in text:
            return self.answer(200, completion("I would rather not say.", {"Maybe": -0.1} if logprobs else None))
        return self.answer(200, completion("Alignment: 1\nFinal Score: 4",
                                           {"Yes": math.log(0.6), "No": math.log(0.2), "yes": math.log(0.1)} if logprobs else None))

    def answer(self, status: int, payload: dict, headers: dict | None = None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = FakeJudge()
    yield server
    server.shutdown()


def test_final_score_and_yes_probability_parse_as_the_public_code():
    assert final_score("element (object): 1\nFinal Score: 4") == 0.8
    assert final_score("Final Score:3.5 because") == 0.7
    assert math.isnan(final_score("Final Score: 7"))  # outside 1-5: no match, as flow_grpo's pattern
    assert math.isnan(final_score("no score here")) and math.isnan(final_score(None))
    # sigmoid(logp(Yes) - logp(No)) = P(Yes) / (P(Yes) + P(No)), as Flow-Factory's _get_yes_cond_prob
    assert yes_probability({"Yes": math.log(0.6), "No": math.log(0.2)}) == pytest.approx(0.75)
    assert yes_probability({"Yes": math.log(0.6)}) == 1.0 and yes_probability({"No": -0.1}) == 0.0
    assert yes_probability({"Yes": math.log(0.6), "No": math.log(0.2), " yes": math.log(0.2)}, canonicalize=True) == pytest.approx(0.8)
    assert math.isnan(yes_probability({"Maybe": -0.1}))


def test_unified_reward_sends_a_512_png_with_the_question_at_temperature_0(judge_server):
    judge = VlmJudge(judge_server.url, "judge", retries=0)
    rewards = judge(torch.rand(2, 3, 16, 16), ["a good cat", "a good dog"])
    assert rewards.tolist() == pytest.approx([0.8, 0.8])
    request = judge_server.requests[0]
    image_part, text_part = request["messages"][0]["content"]
    assert request["temperature"] == 0 and request["model"] == "judge"
    assert text_part["text"] in (UNIFIED_REWARD_QUESTION.replace("{prompt}", p) for p in ("a good cat", "a good dog"))
    header, data = image_part["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (512, 512)


def test_yes_probability_asks_for_one_token_with_top_logprobs(judge_server):
    judge = VlmJudge(judge_server.url, "judge", scorer="yes_probability", question="Is {prompt} shown? Yes or No.")
    assert judge(torch.rand(1, 3, 8, 8), ["a good cat"]).tolist() == pytest.approx([0.75])
    request = judge_server.requests[0]
    assert request["max_tokens"] == 1 and request["logprobs"] is True and request["top_logprobs"] == 20
    assert request["messages"][0]["content"][1]["text"] == "Is a good cat shown? Yes or No."


@pytest.mark.parametrize("scorer", ["final_score", "yes_probability"])
def test_a_reply_without_a_score_is_nan_counted_and_named(judge_server, scorer, caplog):
    question = "Is {prompt} shown?" if scorer == "yes_probability" else None  # the public one has no {prompt}
    judge = VlmJudge(judge_server.url, "judge", scorer=scorer, question=question, retries=0)
    with caplog.at_level(logging.WARNING, logger="rlft.rewards.vlm_judge"):
        rewards = judge(torch.rand(2, 3, 8, 8), ["a good cat", "garbage"])
    assert rewards[0] > 0 and math.isnan(rewards[1]) and judge.unparsed == 1
    assert any("gave no" in r.message and "'garbage'" in r.message for r in caplog.records)


def test_429_is_retried_with_backoff_then_scored(judge_server):
    judge = VlmJudge(judge_server.url, "judge", retries=3)
    assert judge(torch.rand(1, 3, 8, 8), ["busy but good"]).tolist() == pytest.approx([0.8])
    assert len(judge_server.requests) == 3  # two 429s, then the answer


def test_a_5xx_after_the_retries_and_a_timeout_are_nan_for_their_image_only(judge_server):
    judge = VlmJudge(judge_server.url, "judge", retries=1, timeout_s=0.5)
    rewards = judge(torch.rand(3, 3, 8, 8), ["broken", "slow", "good"])
    assert math.isnan(rewards[0]) and math.isnan(rewards[1]) and rewards[2] == pytest.approx(0.8)
    assert judge.failed == 2
    assert sum("broken" in r["messages"][0]["content"][1]["text"] for r in judge_server.requests) == 2  # tried, retried


def test_a_server_that_answers_nothing_stops_the_run_naming_it():
    url = closed_port_url().replace("/reward", "/v1")
    with pytest.raises(RuntimeError, match=f"the VLM judge at {url} .* answered none of 2 requests"):
        VlmJudge(url, "judge", retries=0, timeout_s=2)(torch.rand(2, 3, 8, 8), ["a", "b"])


@pytest.mark.parametrize("override,message", [
    ("reward.scorer=score", r"reward.scorer='score' is invalid: must be one of \['final_score', 'yes_probability'\]"),
    ("reward.max_concurrency=0", r"reward.max_concurrency=0 is invalid: must be >= 1"),
])
def test_bad_settings_are_refused_at_composition(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(["reward=vlm_judge", "reward.base_url=http://127.0.0.1:1/v1", override]))


def test_no_server_address_is_refused_at_composition():
    with pytest.raises(ConfigError, match=r"reward.base_url is not set: give the OpenAI-compatible server's address"):
        validate(compose_cfg(["reward=vlm_judge"]))


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_ppo_and_grpo_run_on_the_tiny_sd3_with_a_local_judge(judge_server, algorithm, tmp_path):
    from tests.test_stable_diffusion import save_tiny_assets, sd_overrides
    from tests.tiny_sd import save_tiny_sd3

    assets = save_tiny_assets(tmp_path / "assets", {"sd3": save_tiny_sd3})
    run = tmp_path / "run"
    overrides = [a for a in sd_overrides(assets, model="sd3", pipeline="sd3") if not a.startswith("reward")]
    group = ["algorithm.group_size=2"] if algorithm == "grpo" else []
    run_rlft(*overrides, "model.max_sequence_length=8", f"algorithm={algorithm}", *group, "algorithm.sample_batch_size=2",
             "algorithm.train_batch_size=2", "reward=vlm_judge", f"reward.base_url={judge_server.url}",
             "reward.model=judge", "reward.scorer=yes_probability", "reward.image_size=32", "reward.question='{prompt}?'", f"hydra.run.dir={run}", cwd=tmp_path)
    scalars = read_scalars(run)
    assert all(v == pytest.approx(0.75) for _, v in scalars["reward/mean"] + scalars["eval/oracle_reward"])
    stored = sum(len(torch.load(p, weights_only=True)["rewards"]) for p in (run / "checkpoints" / "answers").rglob("*.pt"))
    assert stored == len(judge_server.requests) > 0  # every answer the judge gave is on disk, each asked once
