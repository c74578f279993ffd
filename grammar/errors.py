"""The one exception type of `lmlang.grammar`."""


class GrammarError(ValueError):
    """A constraint (regex, lark grammar, JSON schema) that cannot be compiled.

    Raised for syntax errors and for constructs the engine does not support (backreferences,
    lookaround, `\\b`, zero-width terminals, ...) and for constraints whose automaton exceeds the
    compile budget. The message names the construct and, where known, its position.
    """
