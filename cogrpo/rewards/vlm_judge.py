"""A vision-language model as judge, behind an OpenAI-compatible chat completions API (vLLM, SGLang, TGI, a hosted
API): each image goes as a PNG data URL with the prompt filled into a template, and the reply must end in a score.

The parse is strict: the reply's last non-empty line must match `score_pattern` whole, and the score must lie in
[min_score, max_score]. Anything else (prose, two numbers, an out-of-range value, an HTTP error, a timeout after
the retries) makes the sample invalid: it is masked out of its group, never scored 0, and counted by reason in
`failures`. Timeouts, dropped connections and HTTP 408, 429, 500, 502-504 are retried with exponential backoff;
other HTTP errors are not (a wrong model name would fail every retry). Only the standard library is used.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from cogrpo.proto.config import VlmJudgeConfig
from cogrpo.proto.errors import InputError
from cogrpo.rewards.interface import Reward

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class Unscored(Exception):
    """One sample could not be judged; `reason` is its failure class."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def png_data_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class VlmJudgeReward(Reward):
    scores = "images"

    def __init__(self, config: VlmJudgeConfig, name: str = "vlm_judge"):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.pattern = re.compile(config.score_pattern)
        self.headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise InputError(f"VLM judge: environment variable {config.api_key_env} (api_key_env) is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self.name = name
        self.failures: Counter[str] = Counter()  # over this reward's lifetime, by reason

    def parse(self, reply: str) -> float:
        lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
        match = self.pattern.fullmatch(lines[-1]) if lines else None
        if match is None:
            raise Unscored("unparsable")
        score = float(match.group(1))
        if not self.config.min_score <= score <= self.config.max_score:
            raise Unscored("out_of_range")
        return score

    def _request(self, body: bytes) -> str:
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
            payload = json.loads(response.read())
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise Unscored("bad_response") from None
        if not isinstance(content, str):
            raise Unscored("bad_response")
        return content

    def _ask(self, image: np.ndarray, prompt: str) -> str:
        """The reply's text, after up to `retries` retries of the transient failures."""
        c = self.config
        body = json.dumps({"model": c.model, "max_tokens": c.max_tokens, "temperature": 0.0, "messages": [
            {"role": "user", "content": [{"type": "text", "text": c.template.replace("{prompt}", prompt)},
                                         {"type": "image_url", "image_url": {"url": png_data_url(image)}}]}]})
        attempt = 0
        while True:
            try:
                return self._request(body.encode())
            except urllib.error.HTTPError as exc:
                reason, retry = f"http_{exc.code}", exc.code in RETRYABLE_STATUS
            except (TimeoutError, socket.timeout):
                reason, retry = "timeout", True
            except urllib.error.URLError as exc:
                timed_out = isinstance(exc.reason, (TimeoutError, socket.timeout))
                reason, retry = "timeout" if timed_out else "connection", True
            except (OSError, http.client.HTTPException):  # reset, dropped or garbled mid-response
                reason, retry = "connection", True
            except ValueError:  # a body that is not JSON text
                reason, retry = "bad_response", False
            if not retry or attempt == c.retries:
                raise Unscored(reason)
            time.sleep(c.backoff_s * 2**attempt)
            attempt += 1

    def _judge(self, image: np.ndarray, prompt: str) -> float | str:
        try:
            return self.parse(self._ask(image, prompt))
        except Unscored as exc:
            return exc.reason

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        with ThreadPoolExecutor(min(self.config.concurrency, len(images)) or 1) as pool:
            results = list(pool.map(self._judge, images, prompts))
        valid = np.array([not isinstance(r, str) for r in results], dtype=bool)
        scores = np.array([r if ok else np.nan for r, ok in zip(results, valid)], dtype=np.float64)
        failed = Counter(r for r in results if isinstance(r, str))
        if failed:
            self.failures.update(failed)
            log.warning("%s: %d of %d samples unscored (%s)", self.name, sum(failed.values()), len(results),
                        ", ".join(f"{k} {v}" for k, v in sorted(failed.items())))
        return scores, valid
