"""Request bodies of the native endpoints: `/generate` (SGLang's fields), `/tokenize`, `/detokenize`.

`/generate` takes one prompt (`text` or `input_ids`) or a list of them; per-prompt fields
(`sampling_params`, `return_logprob`, `logprob_start_len`, `top_logprobs_num`, `rid`) are either
one value for all or a list with one value per prompt. `sampling_params` is validated by the
runtime's `SamplingParams.from_dict`, whose `ValueError` names the field.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateRequest(_Strict):
    text: Optional[Union[str, list[str]]] = None
    input_ids: Optional[Union[list[int], list[list[int]]]] = None
    sampling_params: Optional[Union[dict[str, Any], list[dict[str, Any]]]] = None
    return_logprob: Union[bool, list[bool]] = False
    logprob_start_len: Union[int, list[int]] = -1
    top_logprobs_num: Union[int, list[int]] = 0
    return_text_in_logprobs: bool = False
    stream: bool = False
    rid: Optional[Union[str, list[str]]] = None
    priority: int = 0

    @model_validator(mode="after")
    def _one_prompt_kind(self) -> "GenerateRequest":
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of 'text' or 'input_ids'")
        if self.is_batch and len(self.prompts()) == 0:
            raise ValueError("the prompt list is empty")
        return self

    @property
    def is_batch(self) -> bool:
        if self.text is not None:
            return isinstance(self.text, list)
        return len(self.input_ids) > 0 and isinstance(self.input_ids[0], list)

    def prompts(self) -> list:
        """One entry per prompt: a str, or a list of token ids."""
        if self.text is not None:
            return list(self.text) if isinstance(self.text, list) else [self.text]
        return list(self.input_ids) if self.is_batch else [self.input_ids]

    def per_prompt(self, name: str, index: int, count: int) -> Any:
        """Field `name` for prompt `index`: a list must have one value per prompt."""
        value = getattr(self, name)
        if isinstance(value, list):
            if not self.is_batch or len(value) != count:
                raise ValueError(f"{name} is a list of {len(value)} but there are {count} prompt(s)")
            return value[index]
        return value


class TokenizeRequest(_Strict):
    text: Union[str, list[str]]
    add_special_tokens: bool = True


class DetokenizeRequest(_Strict):
    input_ids: Union[list[int], list[list[int]]]
    skip_special_tokens: bool = False


class AbortRequest(_Strict):
    rid: str
