"""Choice methods: how `select` turns per-token logprobs of each choice into a decision.

A choice's tokens are the tokens of `prefix + choice` after the longest token prefix they share
with `prefix` alone; `logprobs[i][j]` is the log-probability of choice i's j-th such token given
everything before it. Methods are registered by name (the IR stores the name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class ChoiceDecision:
    """The chosen index and one score per choice (higher is better)."""

    index: int
    scores: list


class ChoiceMethod:
    """Base of choice methods.

    Invariants: `decide` returns the index of one of the choices; ties go to the earliest choice;
    `needs_unconditional` methods get, for each choice, the logprobs of the same tokens scored
    after only the model's start token (no prompt).
    """

    name: str = ""
    needs_unconditional: bool = False

    def decide(self, logprobs: Sequence[Sequence[float]], unconditional: Optional[Sequence[Sequence[float]]] = None) -> ChoiceDecision:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _argmax(scores: Sequence[float]) -> int:
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


class TokenLengthNormalized(ChoiceMethod):
    """Highest mean token logprob (the choice's log-likelihood divided by its token count)."""

    name = "token_length_normalized"

    def decide(self, logprobs, unconditional=None) -> ChoiceDecision:
        scores = [_mean(lp) for lp in logprobs]
        return ChoiceDecision(_argmax(scores), scores)


class GreedyTokenSelection(ChoiceMethod):
    """The choice greedy decoding would follow: compare the first tokens' logprobs, keep the best
    (all of them on a tie), then the next tokens', and so on. A choice with fewer tokens than the
    position being compared counts its own mean logprob there. Scores are the mean logprobs."""

    name = "greedy_token_selection"

    def decide(self, logprobs, unconditional=None) -> ChoiceDecision:
        means = [_mean(lp) for lp in logprobs]
        width = max(len(lp) for lp in logprobs)

        def at(i: int, j: int) -> float:
            return logprobs[i][j] if j < len(logprobs[i]) else means[i]

        remaining = list(range(len(logprobs)))
        for j in range(width):
            best = max(at(i, j) for i in remaining)
            remaining = [i for i in remaining if at(i, j) == best]
            if len(remaining) == 1:
                break
        return ChoiceDecision(remaining[0], means)


class UnconditionalLikelihoodNormalized(ChoiceMethod):
    """Highest mean of (logprob given the prompt - logprob given no prompt) over the choice's
    tokens: favours choices the prompt makes likelier, not choices that are likely anyway."""

    name = "unconditional_likelihood_normalized"
    needs_unconditional = True

    def decide(self, logprobs, unconditional=None) -> ChoiceDecision:
        if unconditional is None:
            raise ValueError(f"{self.name} needs the unconditional logprobs of every choice")
        scores = [_mean([c - u for c, u in zip(cond, uncond)]) for cond, uncond in zip(logprobs, unconditional)]
        return ChoiceDecision(_argmax(scores), scores)


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()

CHOICE_METHODS: dict = {
    m.name: m for m in (token_length_normalized, greedy_token_selection, unconditional_likelihood_normalized)
}


def method_name(method: object) -> str:
    """The registry name of a choice method given as an instance or a name."""
    name = method if isinstance(method, str) else getattr(method, "name", None)
    if name not in CHOICE_METHODS:
        raise ValueError(f"unknown choice method {method!r}; known: {sorted(CHOICE_METHODS)}")
    return name
