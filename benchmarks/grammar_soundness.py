"""Soundness of JSON-schema constrained generation (acceptance 1).

For every schema of the JSON-Schema-Test-Suite (draft 2020-12, required and optional tests) and of
the JSONSchemaBench sample (one split per source), compile it and generate from it; every output
must parse and validate (jsonschema, the schema's own draft, formats asserted). Per split it
prints: schemas, compiled (regex / lark), sound (all samples valid and no invalid test instance
accepted), samples (finished generations), cut (generations that hit --max-tokens first, not
judged), invalid outputs, coverage of the valid test instances (serialized compactly, keys in
schema order, as `json_schema_to_grammar` emits them), refused (GrammarError, by keyword).

Modes:
  --mode core    (default) lmlang.grammar.GrammarCompiler for a small byte-level BPE tokenizer;
                 each generation samples under the token mask from random logits (temperature 1)
                 until eos (fill_bitmask / accept), up to --max-tokens.
  --mode static  no tokenizer: samples are drawn from the regex / lark text itself by a random
                 walk (this checks the converter alone).
  --mode engine  lmlang.runtime.Engine on a tiny random checkpoint, sampling_params
                 {"json_schema": ..., "temperature": 1.0}.

Usage: python benchmarks/grammar_soundness.py [--mode core] [--samples 20] [--limit N]
       [--source suite|bench|all] [--seed 0] [--data /work/shared/data] [--show-failures 5]
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.validators import validator_for

try:
    from re import _constants
    from re import _parser as _sre_parser
except ImportError:  # Python 3.10
    import sre_constants as _constants
    import sre_parse as _sre_parser

DEFAULT_DATA = Path(os.environ.get("LMLANG_TEST_DATA", "/work/shared/data"))


# ---- random walks over a regex (Python syntax) and over a lark grammar ----------------------

_POOL = [chr(c) for c in range(0x20, 0x7F)] * 3 + list("\t\n\x01\x7féüßñ€中文日本語ア한😀🎉\u00a0\u2028\u200b\ufeff")
_REPEATS = (_constants.MAX_REPEAT, _constants.MIN_REPEAT, getattr(_constants, "POSSESSIVE_REPEAT", None))


@functools.lru_cache(maxsize=256)
def _parse_regex(pattern: str):
    return _sre_parser.parse(pattern)


def sample_regex(pattern: str, rng: random.Random) -> str:
    """A random string of the regex's language (a walk over Python's own parse of it)."""
    out: list[str] = []
    _emit(_parse_regex(pattern), rng, out)
    return "".join(out)


def _emit(items: Any, rng: random.Random, out: list[str]) -> None:
    c = _constants
    for op, av in items:
        if op is c.LITERAL:
            out.append(chr(av))
        elif op is c.NOT_LITERAL:
            out.append(_pick(rng, lambda ch, av=av: ord(ch) != av))
        elif op is c.ANY:
            out.append(_pick(rng, lambda ch: ch != "\n"))
        elif op is c.IN:
            out.append(_pick_in(av, rng))
        elif op in _REPEATS:
            lo, hi, sub = av
            hi = lo + 6 if hi is c.MAXREPEAT else hi
            for _ in range(min(hi, lo + int(rng.expovariate(0.7)))):
                _emit(sub, rng, out)
        elif op is c.SUBPATTERN:
            _emit(av[-1], rng, out)
        elif op is c.BRANCH:
            _emit(rng.choice(av[1]), rng, out)
        elif op is not c.AT:
            raise ValueError(f"sampler: unsupported regex construct {op}")


def _pick(rng: random.Random, ok) -> str:
    for _ in range(1000):
        ch = rng.choice(_POOL) if rng.random() < 0.9 else chr(rng.choice((rng.randrange(0x80, 0xD800), rng.randrange(0xE000, 0x110000))))
        if ok(ch):
            return ch
    raise ValueError("sampler: no character found for a class")


def _in_class(items: Any, ch: str) -> bool:
    c = _constants
    for op, av in items:
        if op is c.LITERAL and ord(ch) == av or op is c.RANGE and av[0] <= ord(ch) <= av[1]:
            return True
        if op is c.CATEGORY and re.fullmatch({c.CATEGORY_DIGIT: r"\d", c.CATEGORY_WORD: r"\w", c.CATEGORY_SPACE: r"\s"}.get(av, r"\D"), ch):
            return True
    return False


def _pick_in(items: Any, rng: random.Random) -> str:
    c = _constants
    if items and items[0][0] is c.NEGATE:
        return _pick(rng, lambda ch: not _in_class(items[1:], ch))
    op, av = rng.choice(items)
    if op is c.LITERAL:
        return chr(av)
    if op is c.RANGE:
        code = rng.randint(av[0], av[1])
        return chr(code) if not 0xD800 <= code <= 0xDFFF else chr(av[0])
    return _pick(rng, lambda ch: _in_class([(op, av)], ch))


def sample_lark(parser: Any, rng: random.Random, max_depth: int = 12) -> str:
    """A random string of a lark grammar (`lark.Lark` object), expanding rules at random and
    taking the shortest way out below `max_depth`."""
    rules: dict[str, list] = collections.defaultdict(list)
    for rule in parser.rules:
        rules[rule.origin.name].append([s for s in rule.expansion])
    terminals = {t.name: t.pattern for t in parser.terminals}
    height = _heights(rules)
    out: list[str] = []

    def expand(name: str, depth: int) -> None:
        options = rules[name]
        if depth > max_depth:
            best = min(max((height.get(s.name, 0) for s in e), default=0) for e in options)
            options = [e for e in options if max((height.get(s.name, 0) for s in e), default=0) == best]
        for symbol in rng.choice(options):
            if symbol.is_term:
                pattern = terminals[symbol.name]
                out.append(pattern.value if pattern.type == "str" else sample_regex(pattern.value, rng))
            else:
                expand(symbol.name, depth + 1)

    expand("start", 0)
    return "".join(out)


def sample_ir(grammar: Any, rng: random.Random, max_depth: int = 12) -> str:
    """A random string of a `json_schema_ir.Grammar` (the converter's IR, before rendering)."""
    from lmlang.grammar.json_schema_ir import Alt, Lit, Pat, Ref, Rep, Seq

    heights: dict[str, int] = {}

    def height(node: Any) -> int:
        if isinstance(node, (Lit, Pat)):
            return 0
        if isinstance(node, Ref):
            return heights.get(node.name, 1 << 20) + 1
        if isinstance(node, Rep):
            return 0 if node.min == 0 else height(node.node)
        if isinstance(node, Seq):
            return max((height(p) for p in node.parts), default=0)
        return min(height(o) for o in node.options)

    for _ in range(len(grammar.rules) + 1):
        for name, body in grammar.rules.items():
            heights[name] = min(heights.get(name, 1 << 20), height(body))
    out: list[str] = []

    def walk(node: Any, depth: int) -> None:
        if isinstance(node, Lit):
            out.append(node.text)
        elif isinstance(node, Pat):
            out.append(sample_regex(node.regex, rng))
        elif isinstance(node, Ref):
            walk(grammar.rules[node.name], depth + 1)
        elif isinstance(node, Seq):
            for part in node.parts:
                walk(part, depth)
        elif isinstance(node, Alt):
            options = node.options
            if depth > max_depth:
                best = min(height(o) for o in options)
                options = [o for o in options if height(o) == best]
            walk(rng.choice(options), depth)
        else:
            hi = node.min + 6 if node.max is None else node.max
            count = node.min if depth > max_depth else min(hi, node.min + int(rng.expovariate(0.7)))
            for _ in range(count):
                walk(node.node, depth)

    walk(grammar.root, 0)
    return "".join(out)


def _heights(rules: dict[str, list]) -> dict[str, int]:
    height: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        for name, expansions in rules.items():
            for e in expansions:
                if all(s.is_term or s.name in height for s in e):
                    h = 1 + max((height.get(s.name, 0) for s in e if not s.is_term), default=0)
                    if h < height.get(name, 1 << 30):
                        height[name] = h
                        changed = True
    return height


# ---- test instances serialized the way the converter orders keys -----------------------------


def schema_order_text(instance: Any, doc: Any, ensure_ascii: bool) -> str:
    """Compact JSON of `instance` with object keys in schema order (properties, then required)."""
    return json.dumps(_ordered(instance, [(doc.root, doc.root_base)], doc, 0), separators=(",", ":"), ensure_ascii=ensure_ascii)


def _applicable(schemas: list, doc: Any) -> list:
    out, stack, seen = [], list(schemas), set()
    while stack:
        schema, base = stack.pop(0)
        if not isinstance(schema, dict) or id(schema) in seen:
            continue
        seen.add(id(schema))
        out.append((schema, base))
        base = doc.base_of(schema, base)
        if isinstance(schema.get("$ref"), str):
            try:
                target, target_base, _ = doc.resolve(schema["$ref"], base, "#")
                stack.append((target, target_base))
            except ValueError:
                pass
        for keyword in ("allOf", "anyOf", "oneOf"):
            stack += [(sub, base) for sub in schema.get(keyword, []) if isinstance(sub, dict)]
    return out


def _ordered(value: Any, schemas: list, doc: Any, depth: int) -> Any:
    if depth > 50 or not isinstance(value, (dict, list)):
        return value
    applicable = _applicable(schemas, doc)
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            subs = []
            for schema, base in applicable:
                prefix = schema.get("prefixItems", schema.get("items") if isinstance(schema.get("items"), list) else [])
                rest = schema.get("items") if isinstance(schema.get("items"), dict) else schema.get("additionalItems")
                sub = prefix[i] if i < len(prefix) else rest
                if sub is not None:
                    subs.append((sub, base))
            out.append(_ordered(item, subs, doc, depth + 1))
        return out
    order: list[str] = []
    for schema, _ in applicable:
        order += [k for k in schema.get("properties", {}) if k not in order]
    for schema, _ in applicable:
        order += [k for k in schema.get("required", []) if isinstance(k, str) and k not in order]
    keys = [k for k in order if k in value] + [k for k in value if k not in order]
    return {
        k: _ordered(value[k], [(s["properties"][k], b) for s, b in applicable if k in s.get("properties", {})], doc, depth + 1)
        for k in keys
    }


# ---- the benchmark ---------------------------------------------------------------------------


@dataclass
class Case:
    split: str
    name: str
    schema: Any
    tests: list = field(default_factory=list)


@dataclass
class SplitStats:
    schemas: int = 0
    regex: int = 0
    lark: int = 0
    sound: int = 0
    samples: int = 0
    unfinished: int = 0
    invalid_outputs: int = 0
    invalid_instances_accepted: int = 0
    valid_instances: int = 0
    valid_instances_accepted: int = 0
    refused: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)


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


class CoreGenerator:
    """Random-logit sampling under lmlang.grammar token masks for a tiny byte-level tokenizer."""

    def __init__(self, max_tokens: int, seed: int):
        import tempfile

        import numpy as np
        from lmlang.grammar import (
            GrammarCompiler,
            TokenizerInfo,
            allocate_bitmask,
            bitmask_to_bool,
        )
        from transformers import AutoTokenizer

        from lmlang.testing.tokenizer import make_tokenizer

        path = tempfile.mkdtemp(prefix="lmlang-tok-")
        make_tokenizer(path)
        self.info = TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(path))
        self.compiler = GrammarCompiler(self.info, cache_size=0)
        self.np, self.rng = np, np.random.default_rng(seed)
        self.buf = allocate_bitmask(1, self.info.vocab_size)
        self.to_bool = bitmask_to_bool
        self.max_tokens = max_tokens

    def prepare(self, schema: Any) -> Any:
        return self.compiler.compile_json_schema(schema)

    def accepts(self, compiled: Any, text: str) -> bool | None:
        matcher = compiled.matcher()
        return matcher.accept_text(text) and matcher.can_terminate()

    def generate(self, compiled: Any) -> str | None:
        """One generation; None if it hit max_tokens before eos."""
        np, matcher, tokens = self.np, compiled.matcher(), []
        while not matcher.is_done():
            if len(tokens) >= self.max_tokens:
                return None
            matcher.fill_bitmask(self.buf, 0)
            allowed = np.flatnonzero(self.to_bool(self.buf, 0, self.info.vocab_size))
            logits = self.rng.standard_normal(len(allowed))
            probs = np.exp(logits - logits.max())
            token = int(self.rng.choice(allowed, p=probs / probs.sum()))
            if not matcher.accept(token):
                raise AssertionError(f"matcher refused token {token} that its mask allowed")
            tokens.append(token)
        return self.info.decode(tokens).decode("utf-8", errors="replace")

    def close(self) -> None:
        pass


class EngineGenerator:
    """lmlang.runtime.Engine on a tiny random checkpoint, json_schema sampling at temperature 1;
    test instances are checked as in static mode."""

    def __init__(self, max_tokens: int, seed: int):
        import tempfile

        from lmlang.runtime import Engine

        from lmlang.testing import make_tiny_checkpoint

        path = make_tiny_checkpoint(tempfile.mkdtemp(prefix="lmlang-ckpt-"), "llama")
        self.engine = Engine(model_path=path)
        self.static = StaticGenerator(max_tokens, seed)
        self.max_tokens, self.seed = max_tokens, seed

    def prepare(self, schema: Any) -> Any:
        return schema, self.static.prepare(schema)

    def accepts(self, prepared: Any, text: str) -> bool | None:
        return self.static.accepts(prepared[1], text)

    def generate(self, prepared: Any) -> str | None:
        self.seed += 1
        params = {"json_schema": json.dumps(prepared[0]), "temperature": 1.0, "max_new_tokens": self.max_tokens, "seed": self.seed}
        out = self.engine.generate("JSON:", sampling_params=params)
        if (out.get("meta_info", {}).get("finish_reason") or {}).get("type") == "length":
            return None
        return out["text"]

    def close(self) -> None:
        self.engine.shutdown()


class StaticGenerator:
    """No tokenizer: samples are random walks over the converter's regex text (or, for lark
    outputs, over its IR); test instances are checked with `re` (or lark's Earley parser, for
    grammars small enough for it: it needs minutes on the largest)."""

    LARK_CHECK_CHARS = 20_000

    def __init__(self, max_tokens: int, seed: int):
        self.rng = random.Random(seed)

    def prepare(self, schema: Any) -> Any:
        from lmlang.grammar.json_schema import json_schema_to_grammar, json_schema_to_ir

        kind, source = json_schema_to_grammar(schema)
        if kind == "regex":
            return kind, source, re.compile(source)
        import lark

        small = len(source) <= self.LARK_CHECK_CHARS
        return kind, json_schema_to_ir(schema), lark.Lark(source, parser="earley", lexer="dynamic_complete") if small else None

    def accepts(self, prepared: Any, text: str) -> bool | None:
        kind, _, checker = prepared
        if kind == "regex":
            return checker.fullmatch(text) is not None
        if checker is None:
            return None
        import lark

        try:
            checker.parse(text)
            return True
        except lark.exceptions.LarkError:
            return False

    def generate(self, prepared: Any) -> str | None:
        kind, source, _ = prepared
        return sample_regex(source, self.rng) if kind == "regex" else sample_ir(source, self.rng)

    def close(self) -> None:
        pass


def is_valid(validator: Any, text: str) -> bool:
    try:
        return validator.is_valid(json.loads(text))
    except (ValueError, RecursionError):
        return False


def run_case(case: Case, generator: Any, samples: int, stats: SplitStats, failures: list) -> None:
    from lmlang.grammar.errors import GrammarError
    from lmlang.grammar.json_schema import json_schema_to_grammar
    from lmlang.grammar.json_schema_document import SchemaDocument

    stats.schemas += 1
    try:
        kind, _ = json_schema_to_grammar(case.schema)
    except GrammarError as e:
        stats.refused[refusal_keyword(str(e))] += 1
        return
    try:
        prepared = generator.prepare(case.schema)
    except GrammarError as e:
        stats.errors[f"core: {str(e)[:60]}"] += 1
        return
    setattr(stats, kind, getattr(stats, kind) + 1)
    cls = validator_for(case.schema, default=jsonschema.Draft202012Validator)
    validator = cls(case.schema, format_checker=cls.FORMAT_CHECKER)
    sound = True
    doc = SchemaDocument(case.schema)
    for test in case.tests:
        texts = {schema_order_text(test["data"], doc, ensure_ascii) for ensure_ascii in (False, True)}
        answers = [generator.accepts(prepared, t) for t in texts]
        if None in answers:
            continue
        hit = any(answers)
        if test["valid"]:
            stats.valid_instances += 1
            stats.valid_instances_accepted += hit
        elif hit:
            stats.invalid_instances_accepted += 1
            sound = False
            failures.append((case.split, case.name, "accepted an invalid test instance", min(texts)))
    for _ in range(samples):
        text = generator.generate(prepared)
        if text is None:
            stats.unfinished += 1
            continue
        stats.samples += 1
        if not is_valid(validator, text):
            stats.invalid_outputs += 1
            sound = False
            failures.append((case.split, case.name, "generated an invalid output", text))
    stats.sound += sound


def print_table(results: dict[str, SplitStats]) -> None:
    header = (
        f"{'split':<18}{'schemas':>8}{'compiled':>9}{'(regex/lark)':>13}{'sound':>7}{'samples':>8}{'cut':>5}"
        f"{'invalid':>8}{'cover':>7}  refused (top keywords)"
    )
    print(header)
    print("-" * len(header))
    total = SplitStats()
    for split, s in list(results.items()) + [("TOTAL", total)]:
        if split != "TOTAL":
            for f in ("schemas", "regex", "lark", "sound", "samples", "unfinished", "invalid_outputs", "invalid_instances_accepted", "valid_instances", "valid_instances_accepted"):
                setattr(total, f, getattr(total, f) + getattr(s, f))
            total.refused.update(s.refused)
            total.errors.update(s.errors)
        compiled = s.regex + s.lark
        cover = f"{100 * s.valid_instances_accepted / s.valid_instances:.0f}%" if s.valid_instances else "-"
        refused = sum(s.refused.values())
        top = ", ".join(f"{k} {v}" for k, v in s.refused.most_common(4))
        errors = sum(s.errors.values())
        print(
            f"{split:<18}{s.schemas:>8}{compiled:>9}{f'({s.regex}/{s.lark})':>13}{s.sound:>7}{s.samples:>8}{s.unfinished:>5}"
            f"{s.invalid_outputs:>8}{cover:>7}  {refused}: {top}" + (f"  [errors {errors}]" if errors else "")
        )
    if total.errors:
        print("errors:", dict(total.errors.most_common(8)))
    print(f"invalid test instances accepted: {total.invalid_instances_accepted}")


def main(argv: list[str] | None = None) -> dict[str, SplitStats]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("core", "static", "engine"), default="core")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None, help="schemas per split")
    parser.add_argument("--source", choices=("suite", "bench", "all"), default="all")
    parser.add_argument("--max-tokens", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--show-failures", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    generator = {"core": CoreGenerator, "static": StaticGenerator, "engine": EngineGenerator}[args.mode](args.max_tokens, args.seed)
    results: dict[str, SplitStats] = {}
    failures: list = []
    start = time.time()
    try:
        for case in load_cases(args.data, args.source, args.limit):
            stats = results.setdefault(case.split, SplitStats())
            try:
                run_case(case, generator, args.samples, stats, failures)
            except Exception as e:  # noqa: BLE001 (a crash is a finding, not the end of the run)
                stats.errors[f"{type(e).__name__}: {str(e)[:60]}"] += 1
    finally:
        generator.close()
    print(f"mode={args.mode} samples={args.samples} limit={args.limit} seed={args.seed} ({time.time() - start:.0f}s)")
    print_table(results)
    for failure in failures[: args.show_failures]:
        print("FAIL", *failure)
    return results


if __name__ == "__main__":
    main()
