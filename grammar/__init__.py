"""Constrained decoding: regex, JSON schema and lark CFGs compiled to per-token masks."""
