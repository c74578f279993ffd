"""lmlang: a structured-generation programming language for LLMs."""

__version__ = "0.1.0"
