"""Test utilities: tiny checkpoints and tokenizers made on the fly (no model hub)."""
