"""lmlang: a structured-generation programming language for LLMs.

```python
import lmlang as ll

@ll.function
def qa(s, question):
    s += ll.user(question)
    s += ll.assistant(ll.gen("answer", max_tokens=64))

ll.set_default_backend(ll.Engine("path/to/model"))
state = qa.run(question="What is 2 + 2?", temperature=0)
state["answer"], state.text(), state.messages()
```

Everything is imported lazily (module `__getattr__`), so `import lmlang` costs nearly nothing
and never imports torch or transformers.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "function": "lmlang.lmfunction",
    "LMFunction": "lmlang.lmfunction",
    "CompiledFunction": "lmlang.lmfunction",
    "gen": "lmlang.primitives",
    "gen_int": "lmlang.primitives",
    "gen_float": "lmlang.primitives",
    "gen_bool": "lmlang.primitives",
    "gen_string": "lmlang.primitives",
    "select": "lmlang.primitives",
    "system": "lmlang.primitives",
    "user": "lmlang.primitives",
    "assistant": "lmlang.primitives",
    "token_length_normalized": "lmlang.choices",
    "greedy_token_selection": "lmlang.choices",
    "unconditional_likelihood_normalized": "lmlang.choices",
    "ProgramState": "lmlang.state",
    "ForkGroup": "lmlang.state",
    "Program": "lmlang.program",
    "TraceError": "lmlang.errors",
    "ProgramStructureError": "lmlang.errors",
    "set_default_backend": "lmlang.backends",
    "get_default_backend": "lmlang.backends",
    "Backend": "lmlang.backends.base",
    "Engine": "lmlang.backends.engine",
    "RuntimeEndpoint": "lmlang.backends.runtime_endpoint",
    "OpenAI": "lmlang.backends.openai_backend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lmlang' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))
