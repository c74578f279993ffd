"""Attention backends behind one interface (`base.AttentionBackend`): torch, flashinfer, triton."""
