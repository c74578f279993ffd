"""Model families, one file each; `registry.MODEL_REGISTRY` maps HF architecture names to classes."""
