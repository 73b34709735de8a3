"""`rlft serve reward=NAME [overrides]`: any rlft reward as an HTTP service, in the JSON protocol
that `reward=http` speaks, so that a heavy reward runs in its own process, GPU or machine:

    POST /reward  {"prompts": [str], "images": [base64 PNG]}  ->  {"rewards": [float | null]}
    GET  /health  ->  {"status": "ok", "reward": "<its class>"}

Built on FastAPI (request validation with a message per bad field, 422) served by uvicorn: a
well-kept ASGI stack. JSON and PNG only, never pickle (a pickle is code that the server would
run). A request's images are scored in batches of `serve.max_batch_size`, one request at a time
(one model on one device); a non-finite reward is sent as null, which reward=http counts as
non-finite. Images that are not PNG/JPEG, prompts and images of different counts, or images of
different sizes in one request are answered 400 with what was wrong.

A server other machines reach holds up: an image larger than `serve.max_pixels` is refused (413)
from its header, before it is decoded (a 186 KB PNG can decode to 12,000 x 12,000 pixels); a body
larger than `serve.max_request_mb` is refused (413) before it is read whole (from its Content-Length,
or as it streams in); with `serve.token` set (RLFT_SERVE_TOKEN), `/reward` answers only requests
that carry it (`Authorization: Bearer <token>`, sent by reward=http), else 401.
"""

import base64
import binascii
import hmac
import io
import logging
import math
import threading
from collections.abc import Callable

import hydra
import numpy as np
import torch
from fastapi import FastAPI, Header, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from rlft.rewards import frames
from rlft.run.config import CONFIG_DIR

log = logging.getLogger(__name__)


class RewardRequest(BaseModel):
    prompts: list[str]
    images: list[str]  # base64 PNG (or JPEG)


def decode_images(images: list[str], max_pixels: int | None = None) -> torch.Tensor:
    """base64 images -> (B, C, H, W) in [0, 1]: C = 1 for grayscale images, else 3 (RGB). An image
    of more than `max_pixels` is refused from its header, before its pixels are decoded."""
    arrays = []
    for i, text in enumerate(images):
        try:
            image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))  # reads the header only
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise HTTPException(413, f"images[{i}] is {width} x {height} = {width * height} pixels; this server "
                                         f"decodes at most {max_pixels} a image (serve.max_pixels)")
            image.load()
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise HTTPException(400, f"images[{i}] is not a base64 PNG or JPEG image: {error}") from None
        arrays.append(np.asarray(image.convert("L" if image.mode in ("L", "1", "I;16") else "RGB")))
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise HTTPException(400, f"the images of one request must share a size and mode; found {shapes}")
    stacked = torch.from_numpy(np.stack(arrays)).float() / 255
    return stacked[:, None] if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 before it is read whole,
    from its Content-Length when it has one, else as soon as what has streamed in exceeds it (the
    application is then told that the client left, and what it would answer is dropped)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self.refuse(send, int(length))
        seen, refused = 0, False

        async def counted():
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True
                await self.refuse(send, seen)
            return {"type": "http.disconnect"} if refused else message

        async def unless_refused(message):
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)

    async def refuse(self, send, size: int):
        body = (f'{{"detail": "a request body of {size} bytes or more; this server reads at most {self.max_bytes} '
                f'(serve.max_request_mb)"}}').encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(reward_fn: Callable, max_batch_size: int = 64, max_images: int = 1024, max_pixels: int | None = None,
               max_request_bytes: int | None = None, token: str | None = None) -> FastAPI:
    if max_batch_size < 1 or max_images < 1:
        raise ValueError(f"serve.max_batch_size={max_batch_size} and serve.max_images={max_images} must be >= 1")
    for name, value in (("serve.max_pixels", max_pixels), ("serve.max_request_mb", max_request_bytes)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} is invalid: must be > 0, or null for no limit")
    app = FastAPI(title="rlft reward server", description=__doc__)
    if max_request_bytes is not None:
        app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    one_at_a_time = threading.Lock()  # FastAPI runs plain endpoints in a thread pool; the model is one
    name = type(reward_fn).__name__

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the body back, and fails (500) on a body that is no text.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return JSONResponse(status_code=422, content={"detail": f"expected JSON {{\"prompts\": [str], \"images\": "
                                                                f"[base64 PNG]}}: {problems}"})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "reward": name}

    @app.post("/reward")
    def reward(request: RewardRequest, authorization: str | None = Header(default=None)) -> dict:
        if token is not None and not hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "this server answers only requests with its token (Authorization: Bearer ...; "
                                     "reward=http sends RLFT_SERVE_TOKEN, or reward.token)")
        n = len(request.images)
        if n != len(request.prompts):
            raise HTTPException(400, f"{n} images but {len(request.prompts)} prompts: give one prompt per image")
        if n > max_images:
            raise HTTPException(413, f"{n} images in one request; this server takes at most {max_images} (serve.max_images)")
        if n == 0:
            return {"rewards": []}
        images = decode_images(request.images, max_pixels)
        with one_at_a_time, torch.no_grad():
            scores = torch.cat([frames.score(reward_fn, images[i : i + max_batch_size], request.prompts[i : i + max_batch_size])
                                for i in range(0, n, max_batch_size)])
        if scores.shape != (n,):
            raise HTTPException(500, f"the reward {name} returned shape {tuple(scores.shape)} for {n} images")
        return {"rewards": [float(s) if math.isfinite(s) else None for s in scores.tolist()]}

    return app


@hydra.main(config_path=CONFIG_DIR, config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import uvicorn

    reward_fn = instantiate(cfg.reward)
    s = cfg.serve
    app = create_app(reward_fn, s.max_batch_size, s.max_images, s.max_pixels,
                     None if s.max_request_mb is None else int(s.max_request_mb * 2**20), s.token or None)
    if s.host not in ("127.0.0.1", "localhost", "::1") and not s.token:
        log.warning(f"serving on {s.host} without a token: anyone who reaches this port is answered "
                    f"(set RLFT_SERVE_TOKEN here and where reward=http runs)")
    log.info(f"serving {type(reward_fn).__name__} at http://{s.host}:{s.port}/reward (health: /health)"
             + ("; /reward asks for the token" if s.token else ""))
    uvicorn.run(app, host=s.host, port=s.port, log_level="info")
