"""Bad input gets a 4xx naming the problem, and the next good request still succeeds."""

import importlib.util

import httpx
import pytest

from tests.runtime.server.conftest import API_KEY, MAX_BODY_BYTES

GOOD = ("/generate", {"text": "ok", "sampling_params": {"max_new_tokens": 2}})
LONG_IDS = [5] * 2048  # the tiny model's context length is 2048
needs_grammar = pytest.mark.skipif(importlib.util.find_spec("lmlang.runtime.grammar_backend") is None,
                                   reason="the engine has no grammar backend yet")

# (path, body: dict | raw bytes, status, words the message must contain)
CASES = {
    "malformed json": ("/generate", b'{"text": "x",', 400, ["malformed JSON"]),
    "empty body": ("/v1/completions", b"", 400, ["empty"]),
    "not an object": ("/generate", b"[1, 2]", 400, ["JSON object"]),
    "unknown field": ("/generate", {"text": "x", "sampling_param": {}}, 400, ["unknown field", "sampling_param"]),
    "unknown openai field": ("/v1/completions", {"prompt": "x", "max_token": 3}, 400, ["max_token"]),
    "unknown sampling param": ("/generate", {"text": "x", "sampling_params": {"temprature": 0.5}}, 400,
                               ["temprature"]),
    "mistyped field": ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, ["max_tokens", "integer"]),
    "mistyped message": ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400,
                         ["messages.0.content"]),
    "missing field": ("/v1/chat/completions", {"model": "tiny"}, 400, ["messages"]),
    "text and ids": ("/generate", {"text": "x", "input_ids": [1]}, 400, ["exactly one"]),
    "negative max_tokens": ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, ["max_tokens"]),
    "negative chat max_tokens": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                           "max_tokens": -3}, 400, ["max_tokens"]),
    "negative max_new_tokens": ("/generate", {"text": "x", "sampling_params": {"max_new_tokens": -1}}, 400,
                                ["max_new_tokens"]),
    "bad temperature": ("/generate", {"text": "x", "sampling_params": {"temperature": -1}}, 400, ["temperature"]),
    "ids over context": ("/generate", {"input_ids": LONG_IDS}, 400, ["context length"]),
    "text over context": ("/generate", {"text": "a " * 3000}, 400, ["context length"]),
    "completion ids over context": ("/v1/completions", {"prompt": LONG_IDS}, 400, ["context length"]),
    "chat over context": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                    "max_tokens": 4000}, 400, ["context length", "max_tokens"]),
    "token id out of range": ("/generate", {"input_ids": [1, 99999]}, 400, ["input_ids"]),
    "unknown model": ("/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, ["gpt-9", "does not exist"]),
    "unsupported logit_bias": ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 1.0}}, 400, ["logit_bias"]),
    "tools": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                        "tools": [{"type": "function"}]}, 400, ["tools"]),
    "image content": ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, ["messages.0.content"]),
    "bad response_format": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                     "response_format": {"type": "json_schema"}}, 400,
                            ["json_schema"]),
    "streaming bad input": ("/v1/completions", {"prompt": LONG_IDS, "stream": True}, 400, ["context length"]),
}


def _post(client, path, body):
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_request_is_a_clear_4xx_and_the_server_keeps_serving(http, case):
    path, body, status, words = CASES[case]
    r = _post(http, path, body)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    for word in words:
        assert word in message, message
    good = http.post(GOOD[0], json=GOOD[1])
    assert good.status_code == 200, good.text


@needs_grammar
def test_invalid_regex_is_a_400(http):
    r = http.post("/generate", json={"text": "x", "sampling_params": {"regex": "(ab"}})
    assert r.status_code == 400 and "regex" in r.json()["error"]["message"]
    assert http.post(GOOD[0], json=GOOD[1]).status_code == 200


def test_unknown_path_and_method(http):
    assert http.get("/nope").status_code == 404
    r = http.get("/generate")
    assert r.status_code == 405 and "error" in r.json()


def test_api_key_is_required_when_set(guarded_server):
    url = guarded_server.url
    assert httpx.post(url + GOOD[0], json=GOOD[1]).status_code == 401
    wrong = httpx.post(url + GOOD[0], json=GOOD[1], headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/health").status_code == 200  # probes need no key
    ok = httpx.post(url + GOOD[0], json=GOOD[1], headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert ok.status_code == 200


def test_openai_client_with_api_key(guarded_server):
    import openai

    base = guarded_server.url + "/v1"
    with openai.OpenAI(base_url=base, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    with openai.OpenAI(base_url=base, api_key=API_KEY, max_retries=0) as good:
        assert good.completions.create(model="tiny", prompt="x", max_tokens=2).choices[0].finish_reason


def test_oversized_body_is_a_413(guarded_server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    big = {"text": "x" * (MAX_BODY_BYTES + 1)}
    r = httpx.post(guarded_server.url + "/generate", json=big, headers=headers)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"text": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    r = httpx.post(guarded_server.url + "/generate", content=chunks(), headers=headers)
    assert r.status_code == 413
    ok = httpx.post(guarded_server.url + GOOD[0], json=GOOD[1], headers=headers, timeout=60)
    assert ok.status_code == 200
