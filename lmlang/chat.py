"""Role markers derived from the model's own chat template.

A template renders a list of OpenAI-format messages to text. lmlang appends text as a program
runs, so it needs, for each role, the text that opens a message and the text that closes it.
They are read off the template itself by rendering messages whose content is a sentinel and
splitting around it: the opening of the first message of a conversation (which carries
whatever the template puts at the start: a BOS token, a default system prompt) and the opening
of a later message are measured separately. Appending `begin + content + end` for each message
then reproduces `render(messages)` for templates that render a conversation as the
concatenation of its messages (which is what prefix caching of chats relies on anyway).
"""

from __future__ import annotations

from typing import Callable, Optional

from lmlang.ir import ROLES

_SENTINEL = "LMLANGxSENTINELx"
# Conversations a role can follow, tried in order until the template renders one.
_PRECEDING: dict = {
    "system": ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],),
    "user": ([{"role": "system", "content": "a"}], [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
    "assistant": ([{"role": "user", "content": "a"}], [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]),
}


class ChatTemplate:
    """Opening and closing text of each role, measured from `render(messages) -> str`."""

    def __init__(self, render: Callable[[list], str]) -> None:
        self._render = render
        self._first: dict = {}
        self._later: dict = {}
        self._end: dict = {}

    @classmethod
    def from_markers(cls, begin: dict, end: dict) -> "ChatTemplate":
        """A template given by fixed markers (for backends that never show their template)."""
        template = cls(lambda messages: "".join(begin[m["role"]] + m["content"] + end[m["role"]] for m in messages))
        return template

    def begin(self, role: str, first: bool) -> str:
        """The text that opens a `role` message; `first`: no message came before in this stream."""
        table = self._first if first else self._later
        if role not in table:
            table[role] = self._measure_begin(role, first)
        return table[role]

    def end(self, role: str) -> str:
        """The text that closes a `role` message."""
        if role not in self._end:
            problems = []
            for preceding in ([],) + _PRECEDING[role]:
                try:
                    self._end[role] = self._split(preceding, role)[1]
                    break
                except Exception as e:  # noqa: BLE001 - templates raise their own types; try the next context
                    problems.append(str(e))
            else:
                raise ValueError(f"cannot measure how this chat template closes a {role} message: {'; '.join(problems)}")
        return self._end[role]

    def _split(self, preceding: list, role: str) -> tuple:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        sentinel = _SENTINEL + role
        text = self._render(preceding + [{"role": role, "content": sentinel}])
        if text.count(sentinel) != 1:
            raise ValueError(f"the chat template does not render a {role} message's content verbatim")
        head, _, tail = text.partition(sentinel)
        return head, tail

    def _measure_begin(self, role: str, first: bool) -> str:
        if first:
            return self._split([], role)[0]
        problems = []
        for preceding in _PRECEDING[role]:
            try:
                base = self._render(preceding)
                head, _ = self._split(preceding, role)
            except Exception as e:  # noqa: BLE001 - templates raise their own types; try the next context
                problems.append(str(e))
                continue
            if head.startswith(base):
                return head[len(base) :]
            problems.append("the rendering of a longer conversation does not extend the shorter one")
        raise ValueError(f"cannot place a {role} message after another message with this chat template: {'; '.join(problems)}")


def render_with_jinja(template: str, special_tokens: Optional[dict] = None) -> Callable[[list], str]:
    """A renderer for a Hugging Face-style Jinja chat template string (sandboxed)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)
    tokens = dict(special_tokens or {})

    def render(messages: list) -> str:
        return compiled.render(messages=messages, add_generation_prompt=False, **tokens)

    return render


CHATML = ChatTemplate.from_markers(
    {r: f"<|im_start|>{r}\n" for r in ROLES}, {r: "<|im_end|>\n" for r in ROLES}
)
