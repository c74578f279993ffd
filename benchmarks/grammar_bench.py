"""Grammar engine benchmark: lmlang vs XGrammar, llguidance and outlines-core, single-threaded.

Same tokenizer (benchmarks/bench_tokenizer.py, 32k byte-level BPE), same constraints, same token
sequences. For each constraint: compile time (from source to a matcher-ready object, tokenizer
preprocessing excluded), then a valid instance is tokenized and replayed token by token, timing
`fill bitmask` at every step (the cost on the decode critical path) and the accept call.

Workloads:
  regex  hand-written regexes with a valid sample each;
  json   JSON schemas from /work/shared/data/jsonschemabench (the first valid test instance of
         each, serialized compactly); needs grammar/json_schema.py.
outlines-core runs each case in a forked child limited to --timeout seconds (its index
construction cannot be interrupted and takes many minutes on some schemas); a timeout counts as
a failure. Statistics are over the constraints every available engine handled (compiled, and accepted the
whole instance); per-engine success counts are printed too. After setup the benchmark calls
`gc.freeze()`, as a server would after loading, so that Python's cyclic GC does not rescan the
tokenizer and library objects during requests (lmlang allocates Python objects while it builds
automata lazily; without the freeze a full collection adds ~0.1 s to random mask calls).

    python benchmarks/grammar_bench.py [--workload regex|json|all] [--max-schemas N] [--out results.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import pathlib
import sys
import time

for _var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(_var, "1" if _var != "TOKENIZERS_PARALLELISM" else "false")

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_tokenizer import bench_tokenizer_dir  # noqa: E402

SCHEMA_DIR = pathlib.Path("/work/shared/data/jsonschemabench")

REGEX_CASES = [
    (r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?", "-1234.5678e+12"),
    (r"[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z]{2,}", "john.smith+news@mail.example.com"),
    (r"(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}", "192.168.100.254"),
    (r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\dZ", "2024-02-29T23:59:01Z"),
    (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "123e4567-e89b-12d3-a456-426614174000"),
    (r"\(\d{3}\) \d{3}-\d{4}", "(555) 123-4567"),
    (r'"([^"\\]|\\.)*"', '"The quick brown fox jumps over the lazy dog, then says \\"hello\\" twice."'),
    (r"(Mr|Mrs|Ms|Dr)\. [A-Z][a-z]+ [A-Z][a-z]+", "Dr. Alice Wonderland"),
    (r"[A-Za-z ,.']{1,200}\n", "It was the best of times, it was the worst of times, it was the age of wisdom.\n"),
    (r'\{"name": "[A-Za-z ]{1,40}", "age": \d{1,3}, "tags": \[("[a-z]+"(, "[a-z]+")*)?\]\}',
     '{"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry", "engines"]}'),
    (r"(def [a-z_]+\([a-z_, ]*\):\n(    [^\n]*\n)+)+", "def add(a, b):\n    return a + b\n"),
    (r"(yes|no|maybe)( because [a-z ]{5,80})?", "maybe because the data is not conclusive"),
]


def quantiles(values: list[float], qs=(50, 90, 99)) -> dict[int, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {q: float(np.percentile(arr, q)) if arr.size else float("nan") for q in qs}


# ---- engines -----------------------------------------------------------------------------


class Lmlang:
    name = "lmlang"

    def __init__(self, hf_tokenizer):
        from lmlang.grammar import GrammarCompiler, TokenizerInfo, allocate_bitmask

        self.info = TokenizerInfo.from_huggingface(hf_tokenizer)
        self.info.trie  # built once per tokenizer, like the peers' tokenizer preprocessing
        self.compiler = GrammarCompiler(self.info, cache_size=0)
        self.buf = allocate_bitmask(1, self.info.vocab_size)

    def compile(self, kind, source):
        return self.compiler.compile(kind, source)

    def matcher(self, compiled):
        return compiled.matcher()

    def fill(self, m):
        m.fill_bitmask(self.buf, 0)

    def accept(self, m, t):
        return m.accept(t)


class XGrammar:
    name = "xgrammar"

    def __init__(self, hf_tokenizer):
        import xgrammar as xgr

        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=len(hf_tokenizer))
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self.buf = xgr.allocate_token_bitmask(1, self.info.vocab_size)

    def compile(self, kind, source):
        if kind == "regex":
            return self.compiler.compile_regex(source)
        return self.compiler.compile_json_schema(json.dumps(source), any_whitespace=True, strict_mode=False)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, m):
        m.fill_next_token_bitmask(self.buf, 0)

    def accept(self, m, t):
        return m.accept_token(t)


class LLGuidance:
    name = "llguidance"

    def __init__(self, hf_tokenizer):
        import llguidance
        import llguidance.hf
        import llguidance.numpy

        self.ll = llguidance
        self.fill_fn = llguidance.numpy.fill_next_token_bitmask
        self.tok = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=len(hf_tokenizer))
        self.buf = llguidance.numpy.allocate_token_bitmask(1, len(hf_tokenizer))

    def compile(self, kind, source):
        if kind == "regex":
            grammar = self.ll.LLMatcher.grammar_from_regex(source)
        else:
            grammar = self.ll.LLMatcher.grammar_from_json_schema(json.dumps(source))
        m = self.ll.LLMatcher(self.tok, grammar)
        if m.is_error():
            raise ValueError(m.get_error())
        return [grammar, m]

    def matcher(self, compiled):
        """The matcher made (and timed) by compile first, then fresh ones."""
        m = compiled[1] or self.ll.LLMatcher(self.tok, compiled[0])
        compiled[1] = None
        return m

    def fill(self, m):
        self.fill_fn(m, self.buf, 0)

    def accept(self, m, t):
        return m.consume_token(t)


class OutlinesCore:
    name = "outlines-core"
    isolated = True  # its index construction can run for many minutes: run cases in a child

    def __init__(self, hf_tokenizer):
        import outlines_core as oc
        from lmlang.grammar import TokenizerInfo

        self.oc = oc
        info = TokenizerInfo.from_huggingface(hf_tokenizer)
        tokens: dict[bytes, list[int]] = {}
        for i, b in enumerate(info.token_bytes):
            if b:
                tokens.setdefault(b, []).append(i)
        self.vocab = oc.Vocabulary(hf_tokenizer.eos_token_id, tokens)
        self.buf = np.zeros((1, (len(hf_tokenizer) + 31) // 32), dtype=np.int32)

    def compile(self, kind, source):
        regex = source if kind == "regex" else self.oc.json_schema.build_regex_from_schema(json.dumps(source))
        return self.oc.Index(regex, self.vocab)

    def matcher(self, compiled):
        return self.oc.Guide(compiled)

    def fill(self, m):
        m.write_mask_into(self.buf.ctypes.data, self.buf.size, 4)

    def accept(self, m, t):
        try:
            m.advance(t, return_tokens=False)
            return True
        except Exception:
            return False


ENGINES = [Lmlang, XGrammar, LLGuidance, OutlinesCore]


# ---- workloads ---------------------------------------------------------------------------


def regex_cases():
    return [(f"regex{i}", "regex", pattern, sample) for i, (pattern, sample) in enumerate(REGEX_CASES)]


def json_cases(max_schemas: int):
    files = sorted(SCHEMA_DIR.glob("*.json"))
    cases = []
    for path in files:
        doc = json.loads(path.read_text())
        valid = [t["data"] for t in doc.get("tests", []) if t.get("valid")]
        if not valid:
            continue
        text = json.dumps(valid[0], separators=(",", ":"), ensure_ascii=False)
        cases.append((path.stem, "json_schema", doc["schema"], text))
    step = max(1, len(cases) // max_schemas) if max_schemas else 1
    return cases[::step][:max_schemas] if max_schemas else cases


def run_case_bounded(engine, kind, source, token_ids, timeout_s: float):
    """run_case, in a forked child with a time limit for engines marked `isolated` (a native
    compile cannot be interrupted in-process); the child's timings are as single-threaded."""
    if not getattr(engine, "isolated", False):
        return run_case(engine, kind, source, token_ids)
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child_case, args=(sender, engine, kind, source, token_ids), daemon=True)
    child.start()
    sender.close()
    if receiver.poll(timeout_s):
        try:
            result = receiver.recv()
        except EOFError:  # the child died without an answer (killed for memory, crashed)
            result = None
        child.join()
        return result if result is not None else f"crashed: child exit code {child.exitcode}"
    child.kill()
    child.join()
    return f"timeout: over {timeout_s:.0f}s"


def _child_case(sender, engine, kind, source, token_ids) -> None:
    sender.send(run_case(engine, kind, source, token_ids))
    sender.close()


def run_case(engine, kind, source, token_ids):
    """(compile seconds, [mask seconds], [accept seconds], [warm mask seconds]) or an error.

    The warm pass replays the same tokens on a second matcher of the same compiled constraint:
    the steady state of a server that sees the constraint again."""
    try:
        t0 = time.perf_counter()
        compiled = engine.compile(kind, source)
        compile_s = time.perf_counter() - t0
    except Exception as e:  # a peer that does not support a schema: counted, not fatal
        return f"compile: {type(e).__name__}: {str(e)[:120]}"
    first = replay(engine, compiled, token_ids)
    if isinstance(first, str):
        return first
    try:
        warm = replay(engine, compiled, token_ids)
    except Exception as e:
        return f"warm pass: {type(e).__name__}: {e}"
    if isinstance(warm, str):
        return "warm pass " + warm
    return compile_s, first[0], first[1], warm[0]


def replay(engine, compiled, token_ids):
    """([mask seconds], [accept seconds]) over the tokens, or an error string."""
    try:
        m = engine.matcher(compiled)
    except Exception as e:
        return f"matcher: {type(e).__name__}: {str(e)[:120]}"
    masks, accepts = [], []
    for t in token_ids:
        t0 = time.perf_counter()
        engine.fill(m)
        t1 = time.perf_counter()
        ok = engine.accept(m, t)
        t2 = time.perf_counter()
        masks.append(t1 - t0)
        accepts.append(t2 - t1)
        if not ok:
            return f"rejected token {len(accepts) - 1} of {len(token_ids)}"
    return masks, accepts


def bench(workload: str, cases, hf_tokenizer, engines, timeout_s: float) -> dict:
    """Runs every case on every engine, prints the table; returns the per-case results
    ({engine: {case: [compile s, [mask s], [accept s], [warm mask s]] or failure text}})."""
    results = {e.name: {} for e in engines}
    for i, (name, kind, source, sample) in enumerate(cases):
        token_ids = hf_tokenizer.encode(sample, add_special_tokens=False)
        for engine in engines:
            t0 = time.perf_counter()
            results[engine.name][name] = run_case_bounded(engine, kind, source, token_ids, timeout_s)
            took = time.perf_counter() - t0
            if took > 10:
                print(f"  [{i + 1}/{len(cases)}] {engine.name} took {took:.0f}s on {name}", file=sys.stderr, flush=True)
    common = [c[0] for c in cases if all(not isinstance(results[e.name][c[0]], str) for e in engines)]
    num_tokens = sum(len(results[engines[0].name][c][1]) for c in common) if engines else 0
    print(f"\n## {workload}: {len(cases)} constraints; {len(common)} handled by every engine ({num_tokens} tokens)", flush=True)
    print(
        f"{'engine':<14}{'ok':>9}{'compile p50':>13}{'compile p90':>13}{'mask p50':>11}{'mask p99':>11}"
        f"{'warm p50':>11}{'warm p99':>11}{'accept p50':>12}"
    )
    stats = {}
    for engine in engines:
        res = results[engine.name]
        ok = sum(not isinstance(r, str) for r in res.values())
        comp = [res[c][0] for c in common]
        masks = [x for c in common for x in res[c][1]]
        accepts = [x for c in common for x in res[c][2]]
        warm = [x for c in common for x in res[c][3]]
        cq, mq, aq, wq = quantiles(comp), quantiles(masks), quantiles(accepts), quantiles(warm)
        stats[engine.name] = (cq, mq, wq)
        print(
            f"{engine.name:<14}{ok:>5}/{len(cases):<3}{cq[50] * 1e3:>11.2f}ms{cq[90] * 1e3:>11.2f}ms"
            f"{mq[50] * 1e6:>9.1f}us{mq[99] * 1e6:>9.0f}us{wq[50] * 1e6:>9.1f}us{wq[99] * 1e6:>9.0f}us"
            f"{aq[50] * 1e6:>10.1f}us",
            flush=True,
        )
    if "lmlang" in stats:
        ours = stats["lmlang"]
        for other, (cq, mq, wq) in stats.items():
            if other == "lmlang":
                continue
            print(
                f"lmlang / {other}: compile p50 {ours[0][50] / cq[50]:.2f}x p90 {ours[0][90] / cq[90]:.2f}x | "
                f"mask p50 {ours[1][50] / mq[50]:.2f}x p99 {ours[1][99] / mq[99]:.2f}x | "
                f"warm mask p50 {ours[2][50] / wq[50]:.2f}x p99 {ours[2][99] / wq[99]:.2f}x"
            )
    failures = {e.name: {c: r for c, r in results[e.name].items() if isinstance(r, str)} for e in engines}
    for engine_name, fails in failures.items():
        for case, reason in list(fails.items())[:5]:
            print(f"  {engine_name} failed {case}: {reason}")
        if len(fails) > 5:
            print(f"  {engine_name}: {len(fails) - 5} more failures")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", choices=["regex", "json", "all"], default="all")
    parser.add_argument("--max-schemas", type=int, default=200, help="0 = every schema with a valid instance")
    parser.add_argument("--engines", default="lmlang,xgrammar,llguidance,outlines-core")
    parser.add_argument("--timeout", type=float, default=60.0, help="per case, for engines run in a child process")
    parser.add_argument("--out", help="write every case's timings (or failure) as JSON to this path")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    path = bench_tokenizer_dir()
    hf_tokenizer = AutoTokenizer.from_pretrained(path)
    print(f"tokenizer: {path} ({len(hf_tokenizer)} tokens); single-threaded; times per call", flush=True)
    wanted = args.engines.split(",")
    engines = []
    for cls in ENGINES:
        if cls.name not in wanted:
            continue
        try:
            t0 = time.perf_counter()
            engines.append(cls(hf_tokenizer))
            print(f"{cls.name}: tokenizer setup {time.perf_counter() - t0:.2f}s", flush=True)
        except ImportError as e:
            print(f"{cls.name}: not importable ({e}); skipped")
    # Like a server after startup: long-lived objects (transformers, tokenizers, vocabularies)
    # leave the cyclic GC's generations, so a collection does not rescan them mid-request.
    gc.collect()
    gc.freeze()
    out = {}
    if args.workload in ("regex", "all"):
        out["regex"] = bench("regex", regex_cases(), hf_tokenizer, engines, args.timeout)
    if args.workload in ("json", "all"):
        out["json"] = bench("json", json_cases(args.max_schemas), hf_tokenizer, engines, args.timeout)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
