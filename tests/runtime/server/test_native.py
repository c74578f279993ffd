"""Native endpoints: SGLang-shaped /generate (batch, stream, logprobs), tokenizer, info, cache, metrics."""

import importlib.util
import json
import re

import pytest

from tests.runtime.server.conftest import wait_idle

GREEDY = {"max_new_tokens": 5, "temperature": 0}
needs_grammar = pytest.mark.skipif(importlib.util.find_spec("lmlang.runtime.grammar_backend") is None,
                                   reason="the engine has no grammar backend yet")


def _sse(response) -> list:
    """The JSON events of an SSE body, checking it ends with [DONE]."""
    lines = [ln for ln in response.text.split("\n") if ln]
    assert all(ln.startswith("data: ") for ln in lines), lines
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[len("data: "):]) for ln in lines[:-1]]


def test_generate_matches_the_engine(http, server_engine):
    r = http.post("/generate", json={"text": "Hello", "sampling_params": GREEDY})
    assert r.status_code == 200
    body = r.json()
    direct = server_engine.generate("Hello", GREEDY)
    assert body["text"] == direct["text"] and body["output_ids"] == direct["output_ids"]
    meta = body["meta_info"]
    assert meta["finish_reason"] == {"type": "length"}
    assert meta["completion_tokens"] == 5 and meta["prompt_tokens"] == len(server_engine.tokenizer.encode("Hello"))
    assert isinstance(meta["id"], str)


def test_generate_batch_and_input_ids(http, server_engine):
    ids = server_engine.tokenizer.encode("Bye")
    batch = http.post("/generate", json={"text": ["Hello", "Bye"], "sampling_params": GREEDY}).json()
    assert isinstance(batch, list) and len(batch) == 2
    single = http.post("/generate", json={"input_ids": ids, "sampling_params": GREEDY}).json()
    assert batch[1]["text"] == single["text"]
    per_prompt = http.post("/generate", json={"input_ids": [ids, ids], "sampling_params": [
        {"max_new_tokens": 2, "temperature": 0}, {"max_new_tokens": 3, "temperature": 0}]}).json()
    assert [r["meta_info"]["completion_tokens"] for r in per_prompt] == [2, 3]


def test_generate_n_gives_a_list(http):
    r = http.post("/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 3, "n": 2, "seed": 1}}).json()
    assert isinstance(r, list) and len(r) == 2


def test_generate_stream_is_sglang_sse(http):
    full = http.post("/generate", json={"text": "Stream", "sampling_params": GREEDY}).json()
    r = http.post("/generate", json={"text": "Stream", "sampling_params": GREEDY, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r)
    texts = [e["text"] for e in events]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # cumulative text
    assert texts[-1] == full["text"]
    assert [e["meta_info"]["finish_reason"] for e in events][-1] == {"type": "length"}
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-1])


def test_generate_batch_stream_tags_the_index(http):
    events = _sse(http.post("/generate", json={"text": ["a", "b"], "sampling_params": GREEDY, "stream": True}))
    assert {e["index"] for e in events} == {0, 1}
    assert sum(e["meta_info"]["finish_reason"] is not None for e in events) == 2


def test_generate_logprobs_in_sglang_shape(http):
    r = http.post("/generate", json={"text": "Hello world", "sampling_params": GREEDY, "return_logprob": True,
                                     "logprob_start_len": 0, "top_logprobs_num": 2,
                                     "return_text_in_logprobs": True}).json()
    meta = r["meta_info"]
    out = meta["output_token_logprobs"]
    assert [e[1] for e in out] == r["output_ids"]
    assert all(len(e) == 3 and e[0] <= 0 and isinstance(e[2], str) for e in out)
    assert all(len(row) == 2 for row in meta["output_top_logprobs"])
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]


@needs_grammar
def test_generate_regex(http):
    r = http.post("/generate", json={"text": "Code:", "sampling_params": {
        "max_new_tokens": 16, "temperature": 0, "regex": "(ab|cd){2}x"}}).json()
    assert re.fullmatch("(ab|cd){2}x", r["text"])


def test_tokenize_and_detokenize(http, server_engine):
    tok = server_engine.tokenizer
    assert http.post("/tokenize", json={"text": "Hello"}).json() == {"input_ids": tok.encode("Hello")}
    both = http.post("/tokenize", json={"text": ["a b", "c"]}).json()["input_ids"]
    assert both == [tok.encode("a b"), tok.encode("c")]
    assert http.post("/detokenize", json={"input_ids": tok.encode("a b")}).json() == {"text": "a b"}


def test_model_info_has_what_remote_programs_need(http, server_engine):
    info = http.get("/model_info").json()
    tok = server_engine.tokenizer
    assert info["served_model_name"] == "tiny"
    assert info["context_length"] == server_engine.context_length
    assert info["vocab_size"] == server_engine.vocab_size
    assert info["chat_template"] == tok.chat_template
    assert (info["bos_token"], info["eos_token"]) == (tok.bos_token, tok.eos_token)
    assert info["eos_token_id"] == tok.eos_token_id
    assert http.get("/get_model_info").json() == info  # SGLang's name


def test_health(http):
    assert http.get("/health").json() == {"status": "ok"}


def test_flush_cache_empties_the_prefix_cache(http):
    http.post("/generate", json={"text": "cache me please", "sampling_params": GREEDY})
    wait_idle(http)
    assert http.post("/flush_cache").json() == {"flushed": True}
    assert http.get("/stats").json()["kv_cached"] == 0


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_requests_tokens_and_latency(http):
    before = http.get("/metrics").text
    http.post("/generate", json={"text": "metrics", "sampling_params": GREEDY})
    http.post("/generate", json={"text": "metrics", "sampling_params": GREEDY, "stream": True})
    wait_idle(http)
    after = http.get("/metrics").text
    assert http.get("/metrics").headers["content-type"].startswith("text/plain")
    for name, grew_by in [("lmlang_requests_total", 2), ("lmlang_generation_tokens_total", 10),
                          ("lmlang_e2e_request_latency_seconds_count", 2),
                          ("lmlang_time_to_first_token_seconds_count", 2)]:
        assert _metric(after, name) - _metric(before, name) == grew_by, name
    assert _metric(after, "lmlang_inter_token_latency_seconds_count") >= 4
    assert _metric(after, "lmlang_cached_prompt_tokens_total") > _metric(before, "lmlang_cached_prompt_tokens_total")
    assert 0 < _metric(after, "lmlang_cache_hit_rate") <= 1
    assert _metric(after, "lmlang_num_requests_running") == 0
    assert _metric(after, "lmlang_engine_alive") == 1
    assert 'lmlang_kv_slots{state="in_use"} 0.0' in after
