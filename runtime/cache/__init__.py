"""KV cache: slot pool, request-to-slot table, and the prefix caches (radix, block, none)."""
