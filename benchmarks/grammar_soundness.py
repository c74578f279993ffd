"""Soundness of JSON-schema constrained generation (acceptance 1 of issue 5).

For every schema of the JSON-Schema-Test-Suite (draft 2020-12, required and optional tests) and of
the JSONSchemaBench sample (one split per source), compile it and generate from it; every output
must parse and validate (jsonschema, the schema's own draft, default 2020-12, formats asserted).
Per split it prints: schemas, compiled (regex / lark for lmlang), sound (every finished output
valid, no generation stuck, no invalid test instance accepted), samples (finished generations),
cut (generations that hit --max-tokens first, not judged), invalid outputs, stuck (the mask left
no way to finish), coverage of the valid test instances (serialized compactly, keys in schema
order, as `json_schema_to_grammar` emits them), refused (the engine rejected the schema; for
lmlang a GrammarError, by keyword), timeout (over --timeout, peers only), errors (crashes).

Modes:
  --mode core    (default) lmlang.grammar.GrammarCompiler: each generation samples from random
                 logits (temperature 1) under the token mask until eos (fill_bitmask / accept).
  --mode static  no tokenizer: samples are random walks over the regex / lark text itself
                 (this checks the converter alone).
  --mode engine  lmlang.runtime.Engine on a tiny random llama checkpoint (one layer; its test
                 tokenizer), sampling_params {"json_schema", "temperature": 1.0, "seed"}: the
                 samples of a schema are one batched call, --concurrency schemas at a time.
  --mode peer    --engine xgrammar | llguidance | outlines-core: the peer's own converter and
                 token masks, sampled like core mode, in a worker process with --timeout
                 seconds per schema (benchmarks/grammar_soundness_peers.py).
Tokenizer (core and peer modes): --tokenizer test (lmlang.testing's 512-token byte-level BPE,
the one the engine mode's checkpoint uses) or bench (benchmarks/bench_tokenizer.py, 32k).

Usage: python benchmarks/grammar_soundness.py [--mode core] [--engine NAME] [--samples 20]
       [--limit N] [--source suite|bench|all] [--seed 0] [--data DIR] [--out results.json]
       python benchmarks/grammar_soundness.py --combine core.json engine.json xgrammar.json ...
Data: --data, else $LMLANG_TEST_DATA, else ../shared/data next to the repository.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grammar_soundness_validate import ValidatorPool
from grammar_soundness_walks import (  # noqa: F401
    sample_ir,
    sample_lark,
    sample_regex,
    schema_order_text,
)

DEFAULT_DATA = Path(os.environ.get("LMLANG_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PROMPT = "JSON:"


@dataclass
class Case:
    split: str
    name: str
    schema: Any
    tests: list = field(default_factory=list)


@dataclass
class Outcome:
    """What a generator did with one schema. status: "ok" | "refused" | "timeout" | "error";
    samples: (status "done" | "cut" | "stuck: ...", text or None); answers: per instance text,
    whether it is accepted (None: not checked)."""

    status: str
    detail: str = ""
    kind: str = ""
    answers: list = field(default_factory=list)
    samples: list = field(default_factory=list)


@dataclass
class SplitStats:
    schemas: int = 0
    regex: int = 0
    lark: int = 0
    compiled: int = 0
    sound: int = 0
    samples: int = 0
    cut: int = 0
    invalid_outputs: int = 0
    not_utf8: int = 0
    invalid_after_repair: int = 0
    sound_after_repair: int = 0
    unjudged: int = 0
    stuck: int = 0
    invalid_instances_accepted: int = 0
    valid_instances: int = 0
    valid_instances_accepted: int = 0
    timeouts: int = 0
    refused: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)

    def merge(self, other: SplitStats) -> None:
        for name, value in vars(other).items():
            if isinstance(value, collections.Counter):
                getattr(self, name).update(value)
            else:
                setattr(self, name, getattr(self, name) + value)


def load_cases(data: Path, source: str, limit: int | None) -> list[Case]:
    cases: list[Case] = []
    if source in ("suite", "all"):
        root = data / "json-schema-test-suite" / "tests" / "draft2020-12"
        for split, files in (("suite", sorted(root.glob("*.json"))), ("suite/optional", sorted(root.glob("optional/**/*.json")))):
            group = []
            for path in files:
                for i, entry in enumerate(json.loads(path.read_text())):
                    group.append(Case(split, f"{path.relative_to(root)}#{i} {entry['description']}", entry["schema"], entry["tests"]))
            cases += group[:limit] if limit else group
    if source in ("bench", "all"):
        by_split: dict[str, list[Case]] = collections.defaultdict(list)
        for path in sorted((data / "jsonschemabench").glob("*.json")):
            entry = json.loads(path.read_text())
            by_split[bench_split(path.name)].append(Case(bench_split(path.name), path.name, entry["schema"], entry.get("tests", [])))
        for split in sorted(by_split):
            cases += by_split[split][:limit] if limit else by_split[split]
    if not cases:
        raise FileNotFoundError(f"no schemas under {data} (set --data or LMLANG_TEST_DATA)")
    return cases


def bench_split(file_name: str) -> str:
    """The JSONSchemaBench split of a file: its source prefix (BFCL_* are one split)."""
    split = file_name.split("---")[0] if "---" in file_name else re.sub(r"_\d+\.json$", "", file_name)
    return "BFCL" if split.startswith("BFCL") else split


def refusal_keyword(message: str) -> str:
    """A short label for a GrammarError: the keyword it names, or its kind."""
    for label in ("malformed", "unsatisfiable", "cannot be resolved", "whitespace"):
        if label in message:
            return label
    m = re.match(r"(format '[^']*'|[$\w/]+)", message)
    return m.group(1) if m else message[:30]


def lmlang_refusal(schema: Any) -> tuple[str, str | None]:
    """(kind "regex" | "lark", None) if lmlang's converter takes the schema, else ("", keyword)."""
    from lmlang.grammar.errors import GrammarError
    from lmlang.grammar.json_schema import json_schema_to_grammar

    try:
        return json_schema_to_grammar(schema)[0], None
    except GrammarError as e:
        return "", refusal_keyword(str(e))


def load_tokenizer(name: str) -> tuple[Any, str]:
    """(transformers tokenizer, its directory): "test" (512 tokens) or "bench" (32k)."""
    from transformers import AutoTokenizer

    if name == "test":
        from lmlang.testing.tokenizer import make_tokenizer

        path = make_tokenizer(tempfile.mkdtemp(prefix="lmlang-tok-"))
    else:
        from bench_tokenizer import bench_tokenizer_dir

        path = str(bench_tokenizer_dir())
    return AutoTokenizer.from_pretrained(path), path


class TextDecoder:
    """Token ids -> text as the constraint engines see tokens: eos dropped, a special token other
    than eos as its literal text; text that is not UTF-8 is reported, not repaired."""

    def __init__(self, hf_tokenizer: Any, eos: int):
        from lmlang.grammar import TokenizerInfo

        self.eos = eos
        self.table = TokenizerInfo.from_huggingface(hf_tokenizer).token_bytes
        for i, b in enumerate(self.table):
            if b is None:
                self.table[i] = hf_tokenizer.convert_ids_to_tokens(i).encode()

    def sample(self, token_ids: list[int], status: str) -> tuple[str, str | None]:
        """(status, text): "done"; "not UTF-8" with the text repaired (U+FFFD for each bad
        sequence); or `status` unchanged with no text."""
        if status != "done":
            return status, None
        data = b"".join(self.table[t] for t in token_ids if t != self.eos)
        try:
            return "done", data.decode("utf-8")
        except UnicodeDecodeError:
            return "not UTF-8", data.decode("utf-8", errors="replace")


class CoreGenerator:
    """Random-logit sampling under lmlang.grammar token masks."""

    concurrency = 1

    def __init__(self, args: argparse.Namespace):
        import numpy as np
        from lmlang.grammar import GrammarCompiler, TokenizerInfo, allocate_bitmask

        hf_tokenizer, _ = load_tokenizer(args.tokenizer)
        self.info = TokenizerInfo.from_huggingface(hf_tokenizer)
        self.decoder = TextDecoder(hf_tokenizer, hf_tokenizer.eos_token_id)
        self.compiler = GrammarCompiler(self.info, cache_size=0)
        self.rng = np.random.default_rng(args.seed)
        self.buf = allocate_bitmask(1, self.info.vocab_size)
        self.max_tokens = args.max_tokens

    def run(self, schema: Any, texts: list[str], samples: int) -> Outcome:
        from lmlang.grammar.errors import GrammarError

        kind, refused = lmlang_refusal(schema)
        if refused:
            return Outcome("refused", refused)
        try:
            compiled = self.compiler.compile_json_schema(schema)
        except GrammarError as e:
            return Outcome("error", f"compile: {str(e)[:60]}")
        answers = []
        for text in texts:
            matcher = compiled.matcher()
            answers.append(matcher.accept_text(text) and matcher.can_terminate())
        return Outcome("ok", kind=kind, answers=answers, samples=[self._generate(compiled) for _ in range(samples)])

    def _generate(self, compiled: Any) -> tuple[str, str | None]:
        from grammar_soundness_peers import bits_to_ids, sample_token

        matcher, tokens = compiled.matcher(), []
        while not matcher.is_done():
            if len(tokens) >= self.max_tokens:
                return "cut", None
            matcher.fill_bitmask(self.buf, 0)
            allowed = bits_to_ids(self.buf[0], self.info.vocab_size)
            if len(allowed) == 0:
                return "stuck: empty mask before the output could end", None
            token = sample_token(self.rng, allowed)
            if not matcher.accept(token):
                return f"stuck: matcher refused token {token} that its mask allowed", None
            tokens.append(token)
        return self.decoder.sample(tokens, "done")

    def close(self) -> None:
        pass


class EngineGenerator:
    """lmlang.runtime.Engine on a tiny random checkpoint; a schema's samples are one batched
    `generate` call with a seed per sample. Test instances are not re-checked (core mode does)."""

    def __init__(self, args: argparse.Namespace):
        from lmlang.runtime import Engine
        from transformers import AutoTokenizer

        from lmlang.testing import make_tiny_checkpoint

        path = make_tiny_checkpoint(tempfile.mkdtemp(prefix="lmlang-ckpt-"), "llama", num_hidden_layers=1)
        self.concurrency = args.concurrency
        running = max(1, self.concurrency * args.samples)
        self.engine = Engine(model_path=path, max_running_requests=running, max_total_tokens=running * (args.max_tokens + 16))
        hf_tokenizer = AutoTokenizer.from_pretrained(path)
        self.decoder = TextDecoder(hf_tokenizer, hf_tokenizer.eos_token_id)
        self.max_tokens = min(args.max_tokens, self.engine.context_length - len(hf_tokenizer.encode(PROMPT)))
        self.seed = args.seed

    def run(self, schema: Any, texts: list[str], samples: int) -> Outcome:
        kind, refused = lmlang_refusal(schema)
        if refused:
            return Outcome("refused", refused)
        params = [{"json_schema": json.dumps(schema), "temperature": 1.0, "max_new_tokens": self.max_tokens,
                   "seed": self.seed * 1_000_003 + i} for i in range(samples)]
        try:
            outs = self.engine.generate([PROMPT] * samples, params)
        except ValueError as e:
            return Outcome("error", f"engine: {str(e)[:60]}")
        results = []
        for out in outs:
            finish = out["meta_info"]["finish_reason"]["type"]
            status, text = self.decoder.sample(out["output_ids"], "done" if finish == "stop" else "cut")
            if status == "done" and text != out["text"]:
                text = f"<text {out['text']!r} differs from its decoded tokens {text!r}>"
            results.append((status, text))
        return Outcome("ok", kind=kind, samples=results)

    def close(self) -> None:
        self.engine.shutdown()


class PeerGenerator:
    """A peer engine (benchmarks/grammar_soundness_peers.py) in a worker process."""

    concurrency = 1

    def __init__(self, args: argparse.Namespace):
        from grammar_soundness_peers import PeerPool

        if not args.engine:
            raise SystemExit("--mode peer needs --engine xgrammar | llguidance | outlines-core")
        hf_tokenizer, path = load_tokenizer(args.tokenizer)
        self.decoder = TextDecoder(hf_tokenizer, hf_tokenizer.eos_token_id)
        self.pool = PeerPool(args.engine, path, hf_tokenizer.eos_token_id, args.timeout)
        self.max_tokens, self.seed = args.max_tokens, args.seed

    def run(self, schema: Any, texts: list[str], samples: int) -> Outcome:
        self.seed += 1
        result = self.pool.run(schema, samples, self.max_tokens, self.seed, texts)
        if result[0] != "ok":
            # the first line, without the "[time] file.cc:line: " prefix native peers add
            return Outcome(result[0], re.sub(r"\[[\d:]+\] \S+:\d+: ", "", result[1]).split("\n")[0][:100])
        return Outcome("ok", answers=result[1], samples=[self.decoder.sample(ids, status) for ids, status in result[2]])

    def close(self) -> None:
        self.pool.close()


class StaticGenerator:
    """No tokenizer: samples are random walks over the converter's regex text (or, for lark
    outputs, over its IR); test instances are checked with `re` (or lark's Earley parser, for
    grammars small enough for it: it needs minutes on the largest)."""

    LARK_CHECK_CHARS = 20_000
    concurrency = 1

    def __init__(self, args: argparse.Namespace):
        import random

        self.rng = random.Random(args.seed)

    def run(self, schema: Any, texts: list[str], samples: int) -> Outcome:
        import lark
        from lmlang.grammar.json_schema import json_schema_to_ir

        kind, refused = lmlang_refusal(schema)
        if refused:
            return Outcome("refused", refused)
        grammar = json_schema_to_ir(schema)
        if kind == "regex":
            pattern = grammar.to_regex()
            checker = re.compile(pattern)
            answers = [checker.fullmatch(t) is not None for t in texts]
            return Outcome("ok", kind=kind, answers=answers, samples=[("done", sample_regex(pattern, self.rng)) for _ in range(samples)])
        source = grammar.to_lark()
        parser = lark.Lark(source, parser="earley", lexer="dynamic_complete") if len(source) <= self.LARK_CHECK_CHARS else None
        answers = [None if parser is None else _lark_accepts(parser, t) for t in texts]
        return Outcome("ok", kind=kind, answers=answers, samples=[("done", sample_ir(grammar, self.rng)) for _ in range(samples)])

    def close(self) -> None:
        pass


def _lark_accepts(parser: Any, text: str) -> bool:
    import lark

    try:
        parser.parse(text)
        return True
    except lark.exceptions.LarkError:
        return False


GENERATORS = {"core": CoreGenerator, "static": StaticGenerator, "engine": EngineGenerator, "peer": PeerGenerator}


def instance_texts(case: Case) -> list[tuple[bool, set[str]]]:
    """Per test instance: (valid, its compact schema-order serializations: ASCII or not, keys in
    the order of all anyOf/oneOf branches or of the branch the value satisfies); none
    for a schema lmlang cannot read (its instances are then not checked)."""
    from lmlang.grammar.errors import GrammarError
    from lmlang.grammar.json_schema_document import SchemaDocument

    try:
        doc = SchemaDocument(case.schema)
    except GrammarError:
        return []
    return [
        (t["valid"], {schema_order_text(t["data"], doc, ascii_only, branch) for ascii_only in (False, True) for branch in (False, True)})
        for t in case.tests
    ]


def run_case(case: Case, generator: Any, samples: int, check_instances: bool, validators: ValidatorPool) -> tuple[SplitStats, list]:
    """One schema through `generator`: its statistics (one schema's worth) and failures."""
    stats, failures = SplitStats(schemas=1), []
    instances = instance_texts(case) if check_instances else []
    texts = sorted({t for _, group in instances for t in group})
    outcome = generator.run(case.schema, texts, samples)
    if outcome.status == "refused":
        stats.refused[outcome.detail] += 1
        return stats, failures
    if outcome.status == "timeout":
        stats.timeouts += 1
        return stats, failures
    if outcome.status == "error":
        stats.errors[outcome.detail] += 1
        return stats, failures
    stats.compiled = 1
    if outcome.kind:
        setattr(stats, outcome.kind, 1)
    answer_of = dict(zip(texts, outcome.answers))
    for valid, group in instances:
        answers = [answer_of.get(t) for t in group]
        if None in answers:
            continue
        if valid:
            stats.valid_instances += 1
            stats.valid_instances_accepted += any(answers)
        elif any(answers):
            stats.invalid_instances_accepted += 1
            failures.append((case.split, case.name, "accepted an invalid test instance", min(group)))
    for status, text in outcome.samples:
        if status == "cut":
            stats.cut += 1
        elif status not in ("done", "not UTF-8"):
            stats.stuck += 1
            failures.append((case.split, case.name, status, ""))
        else:
            verdict = validators.validate((case.split, case.name), case.schema, text)
            if verdict is None or isinstance(verdict, str):
                stats.unjudged += 1
                failures.append((case.split, case.name, verdict or "validation timed out", text))
                continue
            stats.samples += 1
            if status == "not UTF-8":  # invalid JSON text (RFC 8259: UTF-8); judged again repaired
                stats.not_utf8 += 1
                stats.invalid_outputs += 1
                stats.invalid_after_repair += not verdict
                failures.append((case.split, case.name, "generated bytes that are not UTF-8", text))
            elif not verdict:
                stats.invalid_outputs += 1
                stats.invalid_after_repair += 1
                failures.append((case.split, case.name, "generated an invalid output", text))
    unsound = stats.stuck or stats.invalid_instances_accepted
    stats.sound = int(not (unsound or stats.invalid_outputs))
    stats.sound_after_repair = int(not (unsound or stats.invalid_after_repair))
    return stats, failures


def run_all(cases: list[Case], generator: Any, samples: int, check_instances: bool, validators: ValidatorPool,
            progress: bool) -> tuple[dict, list]:
    """Every case, `generator.concurrency` at a time; per-split statistics and all failures."""
    results: dict[str, SplitStats] = {}
    failures: list = []

    def one(case: Case) -> tuple[SplitStats, list]:
        try:
            return run_case(case, generator, samples, check_instances, validators)
        except Exception as e:  # noqa: BLE001 (a crash is a finding, not the end of the run)
            return SplitStats(schemas=1, errors=collections.Counter({f"{type(e).__name__}: {str(e)[:60]}": 1})), []

    for case in cases:
        results.setdefault(case.split, SplitStats())
    pool = concurrent.futures.ThreadPoolExecutor(generator.concurrency) if generator.concurrency > 1 else None
    start = time.time()
    try:
        for i, (case, (stats, fails)) in enumerate(zip(cases, pool.map(one, cases) if pool else map(one, cases))):
            results[case.split].merge(stats)
            failures += fails
            if progress and (i + 1) % 100 == 0:
                print(f"  {i + 1}/{len(cases)} schemas, {time.time() - start:.0f}s", file=sys.stderr, flush=True)
    finally:
        if pool:
            pool.shutdown()
    return results, failures


def _with_total(results: dict[str, SplitStats]) -> list[tuple[str, SplitStats]]:
    total = SplitStats()
    for s in results.values():
        total.merge(s)
    return list(results.items()) + [("TOTAL", total)]


def print_table(results: dict[str, SplitStats]) -> None:
    header = (
        f"{'split':<18}{'schemas':>8}{'compiled':>9}{'(regex/lark)':>13}{'sound':>7}{'samples':>8}{'cut':>6}"
        f"{'invalid':>8}{'stuck':>6}{'cover':>7}{'timeout':>8}  refused (top keywords)"
    )
    print(header)
    print("-" * len(header))
    for split, s in _with_total(results):
        cover = f"{100 * s.valid_instances_accepted / s.valid_instances:.0f}%" if s.valid_instances else "-"
        top = ", ".join(f"{k} {v}" for k, v in s.refused.most_common(4))
        errors = sum(s.errors.values())
        print(
            f"{split:<18}{s.schemas:>8}{s.compiled:>9}{f'({s.regex}/{s.lark})':>13}{s.sound:>7}{s.samples:>8}{s.cut:>6}"
            f"{s.invalid_outputs:>8}{s.stuck:>6}{cover:>7}{s.timeouts:>8}  {sum(s.refused.values())}: {top}"
            + (f"  [errors {errors}]" if errors else "")
        )
    total = _with_total(results)[-1][1]
    if total.errors:
        print("errors:", dict(total.errors.most_common(8)))
    print(f"invalid test instances accepted: {total.invalid_instances_accepted}; finished outputs not judged "
          f"(validator over its time limit, or failing): {total.unjudged}")


def markdown_table(results: dict[str, SplitStats]) -> str:
    """The per-split table for BENCHMARKS.md."""
    lines = [
        ("| split | schemas | compiled | sound (repaired) | outputs judged | cut | invalid (not UTF-8; invalid repaired) "
         "| stuck | refused | timeout | errors |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for split, s in _with_total(results):
        name = f"**{split.lower()}**" if split == "TOTAL" else split
        lines.append(
            f"| {name} | {s.schemas:,} | {s.compiled:,} | {s.sound:,} ({s.sound_after_repair:,}) | {s.samples:,} | {s.cut:,} | "
            f"{s.invalid_outputs:,} ({s.not_utf8:,}; {s.invalid_after_repair:,}) | "
            f"{s.stuck} | {sum(s.refused.values())} | {s.timeouts} | {sum(s.errors.values())} |"
        )
    lines.append("\nNot UTF-8: outputs whose bytes are not UTF-8 (invalid JSON text); repaired: the same outputs "
                 "decoded with U+FFFD for each bad sequence, then validated.")
    total = _with_total(results)[-1][1]
    if total.unjudged:
        lines.append(f"\n{total.unjudged} finished outputs were not judged (validator over its time limit, or failing).")
    return "\n".join(lines)


def combined_table(paths: list[Path]) -> str:
    """Per split and run (an --out file each): compiled / sound / invalid outputs / refused, where
    refused counts timeouts too (marked), and sound and invalid give in parentheses the figures
    with non-UTF-8 outputs repaired, where there were any. The runs must cover the same schemas."""
    runs = []
    for path in paths:
        payload = json.loads(path.read_text())
        splits = {name: SplitStats(**{k: collections.Counter(v) if isinstance(v, dict) else v for k, v in stats.items()})
                  for name, stats in payload["splits"].items()}
        runs.append((payload["mode"], dict(_with_total(splits))))
    names = list(runs[0][1])
    lines = ["| split | schemas | " + " | ".join(mode for mode, _ in runs) + " |", "|---|---:|" + "---:|" * len(runs)]
    for name in names:
        cells = []
        for _, splits in runs:
            s = splits.get(name)
            if s is None:
                cells.append("-")
                continue
            refused = sum(s.refused.values()) + s.timeouts
            sound = f"{s.sound} ({s.sound_after_repair})" if s.not_utf8 else f"{s.sound}"
            invalid = f"{s.invalid_outputs} ({s.invalid_after_repair})" if s.not_utf8 else f"{s.invalid_outputs}"
            timeouts = f" ({s.timeouts} t/o)" if s.timeouts else ""
            cells.append(f"{s.compiled} / {sound} / {invalid} / {refused}{timeouts}")
        label = f"**{name.lower()}**" if name == "TOTAL" else name
        lines.append(f"| {label} | {runs[0][1][name].schemas:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, SplitStats]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=sorted(GENERATORS), default="core")
    parser.add_argument("--engine", default=None, help="peer mode: xgrammar | llguidance | outlines-core")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None, help="schemas per split")
    parser.add_argument("--source", choices=("suite", "bench", "all"), default="all")
    parser.add_argument("--max-tokens", type=int, default=2000, help="per generation (engine: at most the context)")
    parser.add_argument("--tokenizer", choices=("test", "bench"), default="test", help="core and peer modes")
    parser.add_argument("--concurrency", type=int, default=8, help="engine mode: schemas in flight")
    parser.add_argument("--timeout", type=float, default=30.0, help="peer mode: seconds per schema")
    parser.add_argument("--validate-timeout", type=float, default=10.0, help="seconds per output")
    parser.add_argument("--no-instances", action="store_true", help="skip the test-instance checks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--show-failures", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the per-split figures as JSON")
    parser.add_argument("--progress", action="store_true", help="progress lines on stderr")
    parser.add_argument("--combine", type=Path, nargs="+", help="print one table from --out files of several runs")
    args = parser.parse_args(argv)
    if args.combine:
        print(combined_table(args.combine))
        return {}
    warnings.simplefilter("ignore")
    cases = load_cases(args.data, args.source, args.limit)
    start = time.time()
    validators = ValidatorPool(args.validate_timeout)
    generator = GENERATORS[args.mode](args)
    try:
        check = not args.no_instances and args.mode != "engine"
        results, failures = run_all(cases, generator, args.samples, check, validators, args.progress)
    finally:
        generator.close()
        validators.close()
    wall = time.time() - start
    label = args.mode + (f" {args.engine}" if args.engine else "")
    print(f"mode={label} tokenizer={args.tokenizer if args.mode != 'engine' else 'test (checkpoint)'} samples={args.samples} "
          f"max_tokens={args.max_tokens} limit={args.limit} seed={args.seed} ({wall:.0f}s)")
    print_table(results)
    for failure in failures[: args.show_failures]:
        print("FAIL", *failure)
    print()
    print(markdown_table(results))
    if args.out:
        payload = {"mode": label, "args": {k: str(v) for k, v in vars(args).items()}, "wall_s": wall,
                   "splits": {k: dict(vars(v)) for k, v in results.items()}, "failures": failures[:200]}
        args.out.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    return results


if __name__ == "__main__":
    main()
