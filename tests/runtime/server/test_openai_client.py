"""The official `openai` client against the server: completions and chat, sync and streaming."""

import importlib.util
import json

import pytest
from openai import OpenAI

GREEDY = {"temperature": 0}
needs_grammar = pytest.mark.skipif(importlib.util.find_spec("lmlang.runtime.grammar_backend") is None,
                                   reason="the engine has no grammar backend yet")


@pytest.fixture(scope="module")
def client(server):
    with OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def _chat_prompt_len(engine, messages):
    tok = engine.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tok.encode(text, add_special_tokens=False))


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_completion_matches_native_generate(client, http):
    r = client.completions.create(model="tiny", prompt="Hello there", max_tokens=6, **GREEDY)
    native = http.post("/generate", json={"text": "Hello there",
                                          "sampling_params": {"max_new_tokens": 6, "temperature": 0}}).json()
    choice = r.choices[0]
    assert choice.text == native["text"]
    assert choice.finish_reason == "length"
    assert r.object == "text_completion" and r.model == "tiny"
    assert r.usage.prompt_tokens == native["meta_info"]["prompt_tokens"]
    assert r.usage.completion_tokens == 6 and r.usage.total_tokens == r.usage.prompt_tokens + 6


def test_completion_stream_adds_up_to_the_sync_text(client):
    sync = client.completions.create(model="tiny", prompt="Once upon", max_tokens=8, **GREEDY)
    chunks = list(client.completions.create(model="tiny", prompt="Once upon", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == sync.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert chunks[-1].usage.completion_tokens == 8 and chunks[-1].usage.prompt_tokens == sync.usage.prompt_tokens


def test_chat_sync_and_stream(client, server_engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    sync = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, **GREEDY)
    msg = sync.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    assert sync.usage.prompt_tokens == _chat_prompt_len(server_engine, messages)
    assert sync.choices[0].finish_reason in ("length", "stop")
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, stream=True, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == sync.choices[0].finish_reason


def test_chat_without_model_name_uses_the_served_model(server):
    import httpx

    r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "tiny"


def test_n_samples_are_reproducible_with_a_seed(client):
    args = dict(model="tiny", prompt="Colors:", max_tokens=8, n=3, temperature=1.0, seed=7)
    first, second = client.completions.create(**args), client.completions.create(**args)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert len({c.text for c in first.choices}) > 1
    assert first.usage.completion_tokens == 24
    assert first.usage.prompt_tokens == client.completions.create(model="tiny", prompt="Colors:",
                                                                  max_tokens=1).usage.prompt_tokens


def test_chat_n_streams_every_choice(client):
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hey"}],
                                                 max_tokens=4, n=2, seed=3, temperature=1.0, stream=True))
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_stop_string_cuts_the_text(client):
    full = client.completions.create(model="tiny", prompt="The list:", max_tokens=16, **GREEDY).choices[0].text
    k = next(i for i in range(1, len(full)) if full[i].isalnum() and full[i] not in full[:i])
    r = client.completions.create(model="tiny", prompt="The list:", max_tokens=16, stop=[full[k]], **GREEDY)
    assert r.choices[0].text == full[:k]
    assert r.choices[0].finish_reason == "stop"


def test_completion_logprobs(client):
    r = client.completions.create(model="tiny", prompt="abc", max_tokens=5, logprobs=2, **GREEDY)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text or "\ufffd" in r.choices[0].text
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and 1 <= len(top) <= 2
        assert chosen == pytest.approx(max(top.values()), abs=1e-5)  # greedy picks the best token
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_completion_echo_prepends_the_prompt(client):
    r = client.completions.create(model="tiny", prompt="Echo me", max_tokens=3, echo=True, **GREEDY)
    assert r.choices[0].text.startswith("Echo me")


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "q"}], max_tokens=4,
                                       logprobs=True, top_logprobs=3, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-5)
        assert bytes(item.bytes).decode("utf-8", errors="replace") == item.token


@needs_grammar
def test_chat_response_format_json_schema(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Answer in JSON."}], max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}, **GREEDY)
    assert isinstance(json.loads(r.choices[0].message.content)["ok"], bool)
