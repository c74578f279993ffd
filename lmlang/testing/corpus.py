"""A built-in, deterministic English-ish training corpus for the test tokenizer.

The text is produced by a fixed word list and a 64-bit linear congruential generator written
out here (not `random`), so it is the same string on every machine and Python version. It mixes
prose, numbers, JSON-like records and chat phrases so that the tokenizer trained on it has merges
for the kinds of text the tests generate.
"""

from __future__ import annotations

NOUNS = (
    "time year people way day man thing woman life child world school state family student group "
    "country problem hand part place case week company system program question work government number "
    "night point home water room mother area money story fact month lot right study book eye job word "
    "business issue side kind head house service friend father power hour game line end member law car "
    "city community name president team minute idea kid body information back parent face others level "
    "office door health person art war history party result change morning reason research girl guy "
    "moment air teacher force education apple river model token cache request server answer ticket "
    "weather color list value key user assistant system message function"
).split()
VERBS = (
    "is was has said made went took came saw knew got gave found thought told became showed left felt "
    "brought began kept held wrote stood heard let meant set met ran paid sat spoke lay led read grew "
    "lost fell sent built understood drew broke spent cut rose drove bought wore chose runs makes needs "
    "wants likes helps asks answers returns writes reads opens closes starts stops"
).split()
ADJECTIVES = (
    "good new first last long great little own other old right big high different small large next "
    "early young important few public bad same able simple quick bright dark happy short true false "
    "open free full clear red blue green black white"
).split()
FUNCTION_WORDS = "the a an this that every some one no my your our their".split()
PREPOSITIONS = "of in to for with on at from by about into over after under between".split()
CONNECTIVES = "and but so because while then when if".split()
CHAT_PHRASES = (
    "Hello!", "Hi, how are you?", "Thank you.", "Sure, here is the answer:", "Yes.", "No.",
    "Please explain.", "What is the capital of France?", "The capital of France is Paris.",
    "Let me think step by step.", "I am a helpful assistant.", "Can you help me?",
)
NAMES = "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Paris London Tokyo Berlin".split()

_MULTIPLIER = 6364136223846793005
_INCREMENT = 1442695040888963407
_MASK = (1 << 64) - 1


class _LCG:
    """64-bit LCG (Knuth's MMIX constants); `below(n)` uses the high bits."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def below(self, n: int) -> int:
        self.state = (self.state * _MULTIPLIER + _INCREMENT) & _MASK
        return (self.state >> 33) % n

    def pick(self, items: tuple | list) -> str:
        return items[self.below(len(items))]


def _noun_phrase(rng: _LCG) -> str:
    words = [rng.pick(FUNCTION_WORDS)]
    if rng.below(2):
        words.append(rng.pick(ADJECTIVES))
    words.append(rng.pick(NOUNS))
    if rng.below(4) == 0:
        words += [rng.pick(PREPOSITIONS), rng.pick(FUNCTION_WORDS), rng.pick(NOUNS)]
    return " ".join(words)


def _sentence(rng: _LCG) -> str:
    clause = f"{_noun_phrase(rng)} {rng.pick(VERBS)} {_noun_phrase(rng)}"
    if rng.below(3) == 0:
        clause += f" {rng.pick(CONNECTIVES)} {_noun_phrase(rng)} {rng.pick(VERBS)} {rng.pick(ADJECTIVES)}"
    if rng.below(5) == 0:
        clause = f"{rng.pick(NAMES)} said that {clause}"
    end = (".", ".", ".", "!", "?")[rng.below(5)]
    return clause[0].upper() + clause[1:] + end


def _record(rng: _LCG) -> str:
    number = rng.below(100000) - 500 if rng.below(2) else rng.below(1000)
    fraction = f"{rng.below(100)}.{rng.below(1000):03d}"
    flag = ("true", "false", "null")[rng.below(3)]
    return (
        f'{{"name": "{rng.pick(NAMES)}", "{rng.pick(NOUNS)}": {number}, '
        f'"score": {fraction}, "ok": {flag}, "tags": ["{rng.pick(ADJECTIVES)}", "{rng.pick(NOUNS)}"]}}'
    )


def corpus_lines(num_lines: int = 3000, seed: int = 1234) -> list[str]:
    """`num_lines` lines of text: mostly sentences, some JSON records and chat phrases."""
    rng = _LCG(seed)
    lines = []
    for _ in range(num_lines):
        kind = rng.below(10)
        if kind < 7:
            lines.append(" ".join(_sentence(rng) for _ in range(1 + rng.below(3))))
        elif kind < 9:
            lines.append(_record(rng))
        else:
            lines.append(f"{rng.pick(CHAT_PHRASES)} {_sentence(rng)}")
    return lines
