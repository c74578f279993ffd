"""FlashInfer's SM90 block-scaled FP8 GEMM (`lmlang.kernels.fp8_flashinfer`): its checks and
availability answer (CPU), and its products against the torch reference (GPU)."""

import pytest
import torch
import torch.nn.functional as F
from lmlang.kernels.fp8 import FP8_DTYPE, dequant_weight_block_fp8, quant_weight_block_fp8
from lmlang.kernels.fp8_flashinfer import (
    flashinfer_block_fp8_unsupported_reason,
    fp8_block_gemm_flashinfer,
    ref_fp8_block_gemm_flashinfer,
)


def _operands(m: int, n: int, k: int, device: str = "cpu", in_features: int = 0, seed: int = 0):
    """x [m, k] bf16 and w [n, k] block-quantized; with `in_features` < k, both zero-padded from
    in_features to k as `Fp8Linear` pads a ragged input dim."""
    g = torch.Generator().manual_seed(seed)
    in_features = in_features or k
    x = F.pad(torch.randn(m, in_features, generator=g), (0, k - in_features)).to(device, torch.bfloat16)
    w = F.pad(torch.randn(n, in_features, generator=g) * in_features**-0.5, (0, k - in_features))
    w_fp8, w_scale_inv = quant_weight_block_fp8(w.to(device))
    return x, w_fp8, w_scale_inv


def test_unsupported_reason_names_the_shape_and_the_device():
    assert "N % 64" in flashinfer_block_fp8_unsupported_reason("cpu", 200, 256)
    assert "K % 128" in flashinfer_block_fp8_unsupported_reason("cpu", 256, 200)
    assert "not CUDA" in flashinfer_block_fp8_unsupported_reason("cpu", 256, 256)


def test_bad_operands_raise_value_errors():
    x, w, s = _operands(4, 192, 256)
    cases = {
        "bfloat16": (x.float(), w, s, torch.bfloat16),
        "chain": (x[:, :128].contiguous(), w, s, torch.bfloat16),
        "N % 64": (x, w[:100].contiguous(), s, torch.bfloat16),
        "w_scale_inv must be": (x, w, s[:1].contiguous(), torch.bfloat16),
        "writes bfloat16 only": (x, w, s, torch.float16),
        "contiguous": (x.t().contiguous().t(), w, s, torch.bfloat16),
        "CUDA device": (x, w, s, torch.bfloat16),  # right in every way but the device
    }
    for message, (xx, ww, ss, out_dtype) in cases.items():
        with pytest.raises(ValueError, match=message):
            fp8_block_gemm_flashinfer(xx, ww, ss, out_dtype)
    k_ragged = torch.zeros(4, 200, dtype=torch.bfloat16), torch.zeros(192, 200, dtype=FP8_DTYPE)
    with pytest.raises(ValueError, match="K % 128"):
        fp8_block_gemm_flashinfer(*k_ragged, torch.ones(2, 2))


def test_reference_is_the_w8a8_product():
    x, w, s = _operands(3, 192, 384)
    exact = x.float() @ dequant_weight_block_fp8(w, s).t()
    ref = ref_fp8_block_gemm_flashinfer(x, w, s, torch.float32)
    # activation rounding to e4m3 (3 mantissa bits) is all that separates them
    assert 1e-3 < float((ref - exact).norm() / exact.norm()) < 5e-2


def _require_flashinfer_gpu():
    pytest.importorskip("flashinfer")
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("FlashInfer's block-scaled FP8 GEMM runs on SM90 only")


SHAPES = [
    pytest.param(2112, 7168, 0, id="v3-q_a+kv_a"),  # N % 128 == 64: a half weight block
    pytest.param(4096, 512, 0, id="v2lite-kv_b"),  # 4 k blocks: fewer than the pipeline's stages
    pytest.param(2048, 11008, 10944, id="v2lite-down-padded"),  # 86 k blocks, the last one half zeros
]


@pytest.mark.gpu
@pytest.mark.parametrize("n,k,in_features", SHAPES)
def test_gemm_matches_reference_on_gpu(n, k, in_features):
    _require_flashinfer_gpu()
    assert flashinfer_block_fp8_unsupported_reason("cuda", n, k) is None
    for m in (1, 16, 64, 300):  # swap-AB kernel below 32 rows, the normal one above
        x, w, s = _operands(m, n, k, "cuda", in_features, seed=m)
        out = fp8_block_gemm_flashinfer(x, w, s)
        assert out.shape == (m, n) and out.dtype == torch.bfloat16
        ref = ref_fp8_block_gemm_flashinfer(x, w, s, torch.float32)
        err = float((out.float() - ref).norm() / ref.norm())
        assert err < 2e-2, f"M={m}: relative error {err:.3g}"


@pytest.mark.gpu
def test_gemm_captures_in_a_cuda_graph():
    _require_flashinfer_gpu()
    x, w, s = _operands(48, 2112, 7168, "cuda")
    static_x = x.clone()
    fp8_block_gemm_flashinfer(static_x, w, s)  # compiles this M's kernel outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = fp8_block_gemm_flashinfer(static_x, w, s)
    static_x.copy_(x.flip(0))
    graph.replay()
    assert torch.equal(static_y, fp8_block_gemm_flashinfer(x.flip(0).contiguous(), w, s))
    empty = fp8_block_gemm_flashinfer(x[:0], w, s)
    assert empty.shape == (0, 2112)
