"""GPU kernels (Triton), each beside a `ref_*` torch reference. Imports only torch and triton.

Modules (import the one you need; this package imports nothing eagerly):
- `rmsnorm`: `rmsnorm`, `fused_add_rmsnorm`
- `rotary`: `apply_rotary` (neox / GPT-J pairing, partial rotary, from a cos/sin cache),
  `rotary_and_store_kv` / `rotary_and_store_mla_kv` (the rotation and the KV-pool store in one launch)
- `activation`: `silu_and_mul`
- `kv_store`: `store_kv` (MHA/GQA pool), `store_mla_kv` (MLA latent pool)
- `bitmask`: `apply_token_bitmask_` (packed int32 grammar masks on logits)
- `fp8`: `per_token_group_quant_fp8`, `silu_and_mul_quant_fp8`, `quant_weight_block_fp8`,
  `fp8_block_gemm` (W8A8, 128x128 blocks)
- `fp8_cublas`, `fp8_flashinfer`: the same W8A8 product through cuBLASLt and FlashInfer's SM90 kernel
  (peer libraries, each used where a one-time probe on the device matches the reference: `device_probe`)
- `fused_moe`: `fused_moe_gemm`, `fused_experts`, `moe_sum`; token alignment in `moe_align`; configs in
  `moe_config`; the router in `moe_routing` (`router_logits`, `fused_topk`)
- `mla_decode`: `mla_decode` (split-K decode over a latent cache)
- `tree_attention`: `tree_attention` (ragged queries over paged KV, custom or causal mask)
- `decode_attention`: `decode_attention` (split-K GQA decode over paged KV, graph-capturable grid;
  optionally one launch: in-kernel split merge, rotary of q / new k and the new token's store)
- `gemv`: `gemv` (skinny products for decode batches of <= 8 rows, tuned tables per device)
- `gemv_fp8`: `gemv_fp8` (W8A16 skinny products with block-scaled FP8 weights, tuned tables per device)
- `launch`: interpreter-safe launches and programmatic dependent launch (`pdl_wait`, ...);
  `rounding`: `round_to` (bf16 / fp16 rounding that matches torch, compiled or interpreted)

Launchers check shapes, dtypes, devices and layouts and raise ValueError naming the problem.
CUDA tensors run the compiled kernels; CPU tensors run the same kernels through triton's
interpreter (`launch.launch`), which is how the tests check them without a GPU and is far too
slow for serving: on CPU, use the `ref_*` functions (the bitmask launcher does so by default).
"""
