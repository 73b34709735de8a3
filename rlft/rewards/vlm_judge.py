"""`reward=vlm_judge`: a vision-language model asked about each image, behind an
OpenAI-compatible chat-completions server (vLLM, SGLang). The server runs beside rlft, never
inside its environment: both pin other torch and transformers versions.

Two scorers, as the public code computes them:
- `final_score` (UnifiedReward, flow_grpo's `unifiedreward_score_sglang`): the reply is searched
  for `Final Score: X` with X in 1-5, the reward is X / 5. The image goes resized to 512x512 as
  a base64 PNG, at temperature 0.
- `yes_probability` (Flow-Factory's `vllm_evaluate`): one token is generated with its
  `top_logprobs`; the reward is P(Yes) / (P(Yes) + P(No)) = sigmoid(logp(Yes) - logp(No)).

Where the public code turns a reply it cannot read into 0 (a silent, plausible reward), here it
is NaN: counted by the run (health/nonfinite_rewards), left out of the update, and named in a
warning with the reply. Requests run `max_concurrency` at a time; connection errors, timeouts,
429 and 5xx are retried by the `openai` client with exponential backoff (`retries` times).
"""

import base64
import io
import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor

import torch
from openai import OpenAI, OpenAIError

from rlft.checks import as_config_error
from rlft.rewards.jpeg import to_pil

log = logging.getLogger(__name__)

SCORERS = ("final_score", "yes_probability")
# flow_grpo's UnifiedReward question (unifiedreward_score_sglang), {prompt} the caption.
UNIFIED_REWARD_QUESTION = (
    "<image>\nYou are given a text caption and a generated image based on that caption. Your task is to evaluate "
    "this image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with "
    "the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as "
    "described in the caption.\n2. Overall Image Quality: Examine the visual quality of this image, including "
    "clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nBased on the above criteria, "
    "assign a score from 1 to 5 after 'Final Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)
# Flow-Factory's vllm_evaluate question for the yes/no judge (it does not show the prompt).
YES_NO_QUESTION = "Is it a beautiful image?"
QUESTIONS = {"final_score": UNIFIED_REWARD_QUESTION, "yes_probability": YES_NO_QUESTION}
FINAL_SCORE = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")


def final_score(reply: str) -> float:
    """UnifiedReward's 1-5 score / 5; NaN when the reply holds none."""
    match = FINAL_SCORE.search(reply or "")
    return float(match.group(1)) / 5 if match else float("nan")


def yes_probability(top_logprobs: dict[str, float], canonicalize: bool = False) -> float:
    """P(Yes) / (P(Yes) + P(No)) from the first generated token's top log-probabilities
    ({token: logprob}); `canonicalize` sums every case and spacing of yes and no. NaN when
    neither is among them."""
    if canonicalize:
        yes = sum(math.exp(lp) for t, lp in top_logprobs.items() if t.strip().lower() == "yes")
        no = sum(math.exp(lp) for t, lp in top_logprobs.items() if t.strip().lower() == "no")
        return yes / (yes + no) if yes + no > 0 else float("nan")
    yes, no = top_logprobs.get("Yes", -math.inf), top_logprobs.get("No", -math.inf)
    if yes == no == -math.inf:
        return float("nan")
    return 1 / (1 + math.exp(no - yes)) if no - yes < 700 else 0.0  # sigmoid(yes - no), no overflow


def image_url(image, size: int | None) -> str:
    """A PNG data URL, resized to size x size first (flow_grpo sends UnifiedReward 512x512)."""
    if size:
        image = image.resize((size, size))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class VlmJudge:
    @staticmethod
    def check_config(cfg, node, where: str) -> None:
        """Its settings are checked when it is built, which costs nothing (no weights, no network)."""
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate
        with as_config_error("" if where == "reward" else f"{where}: "):
            try:
                instantiate(node)
            except InstantiationException as error:  # Hydra's wrapper of the reward's own ValueError
                raise (error.__cause__ if isinstance(error.__cause__, ValueError) else ValueError(str(error))) from None

    def __init__(self, base_url: str | None, model: str, scorer: str = "final_score",
                 question: str | None = None, api_key: str = "EMPTY", image_size: int | None = 512,
                 max_concurrency: int = 16, timeout_s: float = 120.0, retries: int = 3, max_tokens: int = 512,
                 top_logprobs: int = 20, canonicalize: bool = False):
        if not base_url:
            raise ValueError("reward.base_url is not set: give the OpenAI-compatible server's address, e.g. "
                             "reward.base_url=http://127.0.0.1:8000/v1 (vLLM: `vllm serve MODEL --port 8000`)")
        if scorer not in SCORERS:
            raise ValueError(f"reward.scorer={scorer!r} is invalid: must be one of {list(SCORERS)}")
        question = question or QUESTIONS[scorer]  # null: the public code's question for this scorer
        for name, value, ok, valid in (("max_concurrency", max_concurrency, max_concurrency >= 1, ">= 1"),
                                       ("timeout_s", timeout_s, timeout_s > 0, "> 0"),
                                       ("retries", retries, retries >= 0, ">= 0"),
                                       ("top_logprobs", top_logprobs, 1 <= top_logprobs <= 20, "in [1, 20]")):
            if not ok:
                raise ValueError(f"reward.{name}={value} is invalid: must be {valid}")
        self.base_url, self.model, self.scorer, self.question = base_url, model, scorer, question
        self.image_size, self.max_concurrency, self.max_tokens = image_size, max_concurrency, max_tokens
        self.top_logprobs, self.canonicalize, self.retries = top_logprobs, canonicalize, retries
        # The client retries connection errors, timeouts, 429 and 5xx itself, with exponential backoff.
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=retries)
        self.unparsed = 0  # images that got no score (each became NaN)
        self.failed = 0  # of them, requests that failed after their retries

    def ask(self, image, prompt: str) -> float:
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url(image, self.image_size)}},
            {"type": "text", "text": self.question.replace("{prompt}", prompt)},
        ]}]
        try:
            if self.scorer == "final_score":
                reply = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0,
                                                            max_tokens=self.max_tokens)
                text = reply.choices[0].message.content
                score = final_score(text)
            else:
                reply = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0,
                                                            max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
                logprobs = reply.choices[0].logprobs
                top = {t.token: t.logprob for t in logprobs.content[0].top_logprobs} if logprobs and logprobs.content else {}
                text = f"top_logprobs {top}"
                score = yes_probability(top, self.canonicalize)
        except OpenAIError as error:  # after the client's retries
            text, score = f"no answer after up to {self.retries} retries: {error!r}", float("nan")
            self.failed += 1
        except (AttributeError, IndexError, TypeError) as error:  # a 200 answer that is no chat completion
            text, score = f"a malformed completion ({error})", float("nan")
        if math.isnan(score):
            self.unparsed += 1
            log.warning(f"the VLM judge's reply gave no {self.scorer} (reward NaN, {self.unparsed} so far); "
                        f"prompt {prompt!r}, reply {str(text)[:200]!r}")
        return score

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        failed = self.failed
        with ThreadPoolExecutor(self.max_concurrency) as pool:
            scores = list(pool.map(self.ask, to_pil(images), prompts))
        if self.failed - failed == len(prompts):  # not one answer: the server is down or broken, not one image
            raise RuntimeError(f"the VLM judge at {self.base_url} (model {self.model}) answered none of "
                               f"{len(prompts)} requests, each tried {self.retries + 1} times; is the server up? "
                               f"(reward.base_url, reward.model)")
        return torch.tensor(scores, dtype=torch.float32)
