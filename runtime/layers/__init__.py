"""Building blocks shared by the models, one op per module, in plain torch.

`linear` (Linear, StackedLinear with per-shard `weight_loader` hooks), `norm` (RMSNorm with
fused residual add), `rotary` (`get_rope`: default/linear/dynamic/llama3/yarn, applied by
position index), `activation` (SiluAndMul), `vocab` (VocabEmbedding, LMHead with tying),
`attention` (Attention: per-head shapes -> `batch.attn_backend`), `logits` (compute_logits).
On CUDA, RMSNorm (with its fused residual add), rotary and SiLU-and-mul call their Triton
kernels from `lmlang.kernels` (`dispatch.use_kernels` decides); CPU and `torch.compile` run the
torch code (`rms_norm`, `apply_rotary`, ...).
"""
