"""Decides, after each new token, whether a request is finished and why."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from lmlang.runtime.protocol import FinishReason
from lmlang.runtime.request import Req


class StopChecker:
    """EOS / stop token ids / stop strings / max_new_tokens / grammar end, in that order.

    Before `min_new_tokens` only the length limit applies. Stop strings are matched on the
    decoded tail of the output (wide enough to hold the longest stop string); the front end
    cuts the text at the match, so the stop string is never emitted.
    """

    def __init__(self, tokenizer: Any, eos_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)

    def check(self, req: Req) -> Optional[FinishReason]:
        p = req.params
        out = req.output_ids
        if len(out) >= p.min_new_tokens:
            token = out[-1]
            if p.stop_token_ids and token in p.stop_token_ids:
                return FinishReason("stop", matched=token)
            if not p.ignore_eos and token in self.eos_token_ids:
                return FinishReason("stop", matched=token)
            stops = p.stop_strings
            if stops:
                width = 2 * max(len(s) for s in stops) + 4
                tail = self.tokenizer.decode(out[-width:], skip_special_tokens=p.skip_special_tokens)
                for s in stops:
                    if s in tail:
                        return FinishReason("stop", matched=s)
            if req.grammar is not None and req.grammar.is_done():
                return FinishReason("stop")
        if len(out) >= p.max_new_tokens:
            return FinishReason("length")
        return None
