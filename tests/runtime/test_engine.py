"""Engine behaviour users rely on: prefix reuse, retraction, priority, bad input, abort, streaming."""

import random
import threading
import time

import pytest

from lmlang.runtime import Engine

GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def engine(tiny_ckpt, kv_accounting):
    with Engine(tiny_ckpt("llama"), chunked_prefill_size=64) as e:
        yield e
        kv_accounting(e)


def _ids(n, seed):
    rng = random.Random(seed)
    return [rng.randrange(3, 512) for _ in range(n)]


def test_rerun_hits_cache_and_gives_same_outputs(engine, kv_accounting):
    prompts = [_ids(n, 100 + n) for n in (5, 40, 130)]
    first = engine.generate(input_ids=prompts, sampling_params={**GREEDY, "max_new_tokens": 12})
    second = engine.generate(input_ids=prompts, sampling_params={**GREEDY, "max_new_tokens": 12})
    for a, b, p in zip(first, second, prompts):
        assert a["output_ids"] == b["output_ids"]
        assert a["meta_info"]["cached_tokens"] == 0
        # everything but the last prompt token comes from the cache (its logits are needed)
        assert b["meta_info"]["cached_tokens"] == len(p) - 1
    assert kv_accounting(engine)["kv_in_use"] == 0


@pytest.mark.parametrize("cache,expected_shared", [("radix", 200), ("block", 200 + 15 * 8), ("none", 16 * 200)])
def test_shared_system_prompt_is_computed_once(tiny_ckpt, kv_accounting, cache, expected_shared):
    system = _ids(200, 1)
    suffixes = [_ids(5, 10 + i) for i in range(16)]
    with Engine(tiny_ckpt("llama"), prefix_cache=cache) as e:
        e.generate(input_ids=[system + s for s in suffixes], sampling_params={**GREEDY, "max_new_tokens": 4})
        stats = kv_accounting(e)
    # block caches only whole 16-token blocks: 192 of the 200 shared tokens
    assert stats["prefill_tokens_computed"] == expected_shared + 16 * 5


def test_retraction_completes_everything_with_same_outputs(tiny_ckpt, engine, kv_accounting):
    prompts = [_ids(64, 1000 + i) for i in range(32)]
    params = {**GREEDY, "max_new_tokens": 64}
    reference = engine.generate(input_ids=prompts, sampling_params=params)
    with Engine(tiny_ckpt("llama"), max_total_tokens=512) as small:
        results = small.generate(input_ids=prompts, sampling_params=params)
        stats = kv_accounting(small)
    assert stats["retractions"] > 0
    for got, want in zip(results, reference):
        assert got["meta_info"]["finish_reason"]["type"] == "length"
        assert got["output_ids"] == want["output_ids"]


def test_priority_request_starts_before_queued_lower_priority(tiny_ckpt):
    with Engine(tiny_ckpt("llama"), max_running_requests=2) as e:
        low_rids = [f"low{i}" for i in range(6)]
        done = []

        def submit_low():
            done.append(e.generate(input_ids=[_ids(8, i) for i in range(6)],
                                   sampling_params={**GREEDY, "max_new_tokens": 24}, rid=low_rids))

        t = threading.Thread(target=submit_low)
        t.start()
        deadline = time.time() + 30
        while len(e.stats()["start_order"]) < 2 and time.time() < deadline:
            time.sleep(0.01)
        e.generate(input_ids=_ids(8, 99), sampling_params={**GREEDY, "max_new_tokens": 4}, priority=10, rid="high")
        t.join()
        order = e.stats()["start_order"]
    started_before_high = order[: order.index("high")]
    assert len(started_before_high) <= 3  # only those already running (or admitted in the same step)
    assert all(r in order for r in low_rids)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(prompt=""), "prompt"),
        (dict(input_ids=[5] * 3000), "prompt"),
        (dict(prompt="hi", sampling_params={"max_new_tokens": -1}), "max_new_tokens"),
        (dict(prompt="hi", sampling_params={"temperature": -0.5}), "temperature"),
        (dict(prompt="hi", sampling_params={"top_p": 0.0}), "top_p"),
        (dict(prompt="hi", sampling_params={"top_p": 1.5}), "top_p"),
        (dict(prompt="hi", sampling_params={"stop": 5}), "stop"),
        (dict(prompt="hi", sampling_params={"bogus": 1}), "bogus"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_field(engine, kwargs, field):
    with pytest.raises(ValueError, match=field):
        engine.generate(**kwargs)
    ok = engine.generate("hello", {"max_new_tokens": 3})
    assert ok["meta_info"]["completion_tokens"] >= 1


def test_abort_running_request_frees_kv(engine, kv_accounting):
    stream = engine.generate(input_ids=_ids(20, 5), sampling_params={**GREEDY, "max_new_tokens": 1000}, stream=True,
                             rid="to-abort")
    first = next(stream)
    assert first["meta_info"]["finish_reason"] is None
    engine.abort("to-abort")
    last = None
    for chunk in stream:
        last = chunk
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert kv_accounting(engine)["kv_in_use"] == 0


def test_stream_chunks_are_cumulative_and_end_with_final_text(engine):
    chunks = list(engine.generate("Once upon a time", {"max_new_tokens": 10, "temperature": 0}, stream=True))
    final = engine.generate("Once upon a time", {"max_new_tokens": 10, "temperature": 0})
    texts = [c["text"] for c in chunks]
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 2))
    assert texts[-1] == final["text"]


def test_stop_string_is_not_emitted(engine):
    free = engine.generate(input_ids=_ids(10, 7), sampling_params={**GREEDY, "max_new_tokens": 20})
    text = free["text"]
    stop = text[5:8]
    if len(stop) < 3 or not stop.strip():
        pytest.skip("generated text too short to pick a stop string")
    cut = engine.generate(input_ids=_ids(10, 7), sampling_params={**GREEDY, "max_new_tokens": 20, "stop": stop})
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert cut["text"] == text[: text.find(stop)]


def test_sampling_seed_n_and_penalties(engine):
    p = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9, "top_k": 50, "min_p": 0.05, "seed": 7}
    a = engine.generate("abc", p)
    b = engine.generate("abc", p)
    assert a["output_ids"] == b["output_ids"]
    many = engine.generate("abc", {**p, "n": 3})
    assert len(many) == 3 and many[0]["output_ids"] == a["output_ids"]
    pen = engine.generate("abc", {**GREEDY, "max_new_tokens": 16, "frequency_penalty": 2.0, "presence_penalty": 2.0,
                                  "repetition_penalty": 1.5})
    ids = pen["output_ids"]
    assert len(set(ids)) > len(ids) // 2


def test_min_new_tokens_and_stop_token_ids(engine):
    free = engine.generate(input_ids=_ids(6, 3), sampling_params={**GREEDY, "max_new_tokens": 10})
    first = free["output_ids"][0]
    stopped = engine.generate(input_ids=_ids(6, 3), sampling_params={"temperature": 0, "max_new_tokens": 10,
                                                                     "stop_token_ids": [first]})
    assert stopped["output_ids"] == [first]
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": first}
    held = engine.generate(input_ids=_ids(6, 3), sampling_params={"temperature": 0, "max_new_tokens": 10,
                                                                  "min_new_tokens": 4, "stop_token_ids": [first]})
    assert len(held["output_ids"]) >= 4


def test_top_logprobs(engine):
    r = engine.generate("hello there", {"max_new_tokens": 3, "temperature": 0}, return_logprob=True,
                        top_logprobs_num=5, logprob_start_len=0)
    m = r["meta_info"]
    assert len(m["output_top_logprobs"]) == 3 and all(len(t) == 5 for t in m["output_top_logprobs"])
    # greedy: the chosen token is the most likely one
    for (lp, tok), top in zip(m["output_token_logprobs"], m["output_top_logprobs"]):
        assert tok == top[0][1] and abs(lp - top[0][0]) < 1e-6
    assert m["input_top_logprobs"][0] is None and len(m["input_top_logprobs"][1]) == 5


async def _collect_async(engine):
    out = []
    async for chunk in await engine.async_generate("async", {"max_new_tokens": 5, "temperature": 0}, stream=True):
        out.append(chunk["text"])
    single = await engine.async_generate("async", {"max_new_tokens": 5, "temperature": 0})
    return out, single


def test_async_generate(engine):
    import asyncio

    pieces, single = asyncio.run(_collect_async(engine))
    assert pieces[-1] == single["text"]


def test_pin_holds_prefix(engine, kv_accounting):
    prefix = _ids(50, 77)
    handle = engine.pin(input_ids=prefix)
    s = kv_accounting(engine)
    assert s["kv_protected"] >= 50
    engine.flush_cache()
    r = engine.generate(input_ids=prefix + [5, 6], sampling_params={"max_new_tokens": 1})
    assert r["meta_info"]["cached_tokens"] == 50
    assert engine.unpin(handle)
    assert kv_accounting(engine)["kv_protected"] == 0


@pytest.mark.parametrize("engine_args", [
    dict(page_size=4),
    dict(page_size=16, prefix_cache="block"),
    dict(schedule_policy="lpm"),
    dict(schedule_policy="dfs-weight", chunked_prefill_size=16),
])
def test_page_sizes_and_policies_give_the_same_greedy_outputs(tiny_ckpt, engine, kv_accounting, engine_args):
    shared = _ids(37, 500)
    prompts = [shared + _ids(3 + i, 600 + i) for i in range(6)] + [_ids(20, 700)]
    params = {**GREEDY, "max_new_tokens": 10}
    want = engine.generate(input_ids=prompts, sampling_params=params)
    with Engine(tiny_ckpt("llama"), **engine_args) as e:
        got = e.generate(input_ids=prompts, sampling_params=params)
        again = e.generate(input_ids=prompts, sampling_params=params)
        stats = kv_accounting(e)
    assert [g["output_ids"] for g in got] == [w["output_ids"] for w in want]
    assert [g["output_ids"] for g in again] == [w["output_ids"] for w in want]
    assert stats["kv_in_use"] == 0
    page = engine_args.get("page_size", 1)
    for r, p in zip(again, prompts):
        assert r["meta_info"]["cached_tokens"] == (len(p) - 1) // page * page or engine_args.get("prefix_cache") == "block"


def test_reset_stats_and_async_pin(engine):
    import asyncio

    engine.generate("warm up", {"max_new_tokens": 2})
    engine.reset_stats()
    s = engine.stats()
    assert s["forward_passes"] == 0 and s["max_decode_batch_size"] == 0

    async def pin_roundtrip():
        handle = await engine.async_pin(input_ids=_ids(30, 31))
        protected = (await engine.async_stats())["kv_protected"]
        return protected, await engine.async_unpin(handle)

    protected, released = asyncio.run(pin_roundtrip())
    assert protected >= 30 and released


def test_overlap_schedule_gives_the_same_outputs(tiny_ckpt, engine, kv_accounting):
    prompts = [_ids(10 + 3 * i, 900 + i) for i in range(8)]
    params = [{**GREEDY, "max_new_tokens": 5 + 4 * i} for i in range(8)]
    want = engine.generate(input_ids=prompts, sampling_params=params)
    with Engine(tiny_ckpt("llama"), overlap_schedule=True) as e:
        got = e.generate(input_ids=prompts, sampling_params=params)
        stopped = e.generate(input_ids=prompts[0], sampling_params={"temperature": 0, "max_new_tokens": 30,
                                                                   "stop_token_ids": [want[0]["output_ids"][3]]})
        sampled = e.generate(input_ids=prompts, sampling_params={"max_new_tokens": 12, "temperature": 0.8})
        stats = kv_accounting(e)
    assert stats["overlapped_steps"] > 10
    assert [g["output_ids"] for g in got] == [w["output_ids"] for w in want]
    assert stopped["output_ids"] == want[0]["output_ids"][:4]
    assert all(len(s["output_ids"]) == 12 for s in sampled)
    assert stats["kv_in_use"] == 0
