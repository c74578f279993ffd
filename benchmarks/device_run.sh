#!/usr/bin/env bash
# Runs lmlang's GPU checks and benchmarks on a fresh GPU machine, one step after another, each
# under its own time limit so that one failure cannot eat the others' time. Logs and JSON go to
# $OUT (default /tmp/lmlang-out); a short summary of every step is printed last.
#
#   bash benchmarks/device_run.sh setup tests one_batch_quick kernels_tests cache_out
#
# Steps:
#   setup            install the carried wheels (.whl/, see shared/tools/gpu_wheels.sh) into
#                    /tmp/site and lmlang itself (editable); unpack a carried FlashInfer JIT cache
#   tests            the runtime GPU tests (attention backends, CUDA graphs, parity vs transformers)
#   tests_backends   the attention-backend GPU tests alone
#   kernels_tests    the kernels' GPU tests
#   kernels          benchmarks/kernels.py
#   one_batch_quick  one_batch.py on Llama-3.1-8B: batch 1 / 64, ctx 1024, prefill 8192, profiles
#   one_batch_triton the same with the triton attention backend
#   one_batch        one_batch.py on Llama-3.1-8B: the full grid and eager / graph / compile+graph
#   one_batch_qwen   one_batch.py on Qwen3-8B: batch 1 / 64 / 256 at ctx 1024, prefill 8192
#   serving          serving.py shared-prefix (radix, block, none) with the transformers peer
#   serving_random   serving.py random: 256 requests of 512..1024 tokens, 256 out, radix
#   kernels_decode   benchmarks/kernels.py --only decode_attention
#   bundle           (last) pack every log and JSON under $OUT into bundle.tgz
#   gemv             benchmarks/gemv_bench.py: cuBLAS vs our GEMV at Llama-8B shapes; writes the tuned table
#   one_batch_gemv   one_batch_quick with that table (LMLANG_GEMV_CONFIG)
#   mla_tests        the MLA GPU tests (FlashInfer MLA and Triton vs the torch reference)
#   mla              benchmarks/kernels.py MLA decode: 16 / 128 heads, batch 1/32/128, ctx 4k
#   mla_bench        benchmarks/mla_decode_bench.py: MLA decode graph-timed per layer, FlashInfer vs Triton, batch 1..128
#   moe_tests        the fused-MoE GPU tests
#   tune_moe_v2lite  tune_fused_moe.py for DeepSeek-V2-Lite shapes (tables to $OUT/fused_moe)
#   tune_moe_v3      the same for DeepSeek-V3 shapes
#   moe_tables_in    copy the tuned tables into kernels/configs/fused_moe (this machine's tree)
#   moe              benchmarks/kernels.py fused MoE: V2-Lite and V3, bf16/fp8, M = 1/32/512/4096
#   tune_fp8         tune_fp8_gemm.py: FP8 block GEMM configs on V3 shapes at M = 1, 64, 4096 vs bf16 and _scaled_mm
#   fp8_tests        the FP8 GPU tests (Triton, cuBLAS and FlashInfer GEMMs, the FP8 linear layer)
#   tune_fp8_r2      re-tune the FP8 GEMM at M = 1, 64, 4096 merged into the committed table (+ cuBLAS block column)
#   fp8_tables_in    install that table in this machine's tree
#   fp8_cmp          Triton vs cuBLAS block FP8 across M with the installed table (no search)
#   deepseek_e2e     DeepSeek-V2-Lite-shaped engine decode, bf16 vs FP8, batch 1 / 32 / 128
#   parity           GPU parity vs transformers (trained tiny checkpoints and random ones)
#   sched_cost       scheduler_cost.py: host CPU per decode step and GPU idle, batch 256, overlap on/off
#   runtime_tests    every runtime GPU test but parity (backends, graphs, MLA, MoE, FP8, DeepSeek)
#   fast_tests       the GPU tests of the decode-path kernels (gemv, rotary, norms, KV store, decode
#                    attention) and of the attention backends and CUDA graphs
#   decode_small     benchmarks/kernels.py --only decode_attention_small (B = 1..8, graph-captured, vs FlashInfer)
#   gemv_m1          gemv_bench.py at M = 1: tune, fused inputs, decoder chain with PDL on / off
#   rope_tests       the GPU tests of the rotary and decode-attention kernels, backends and CUDA graphs
#   parity_trained   GPU parity vs transformers on the trained tiny checkpoints only
#   b1               one_batch.py batch 1 / 64 at ctx 1024: profile and the engine's time per token
#   decode_engine    one_batch.py batch 1 / 64 / 256 at ctx 1024 (runner and engine time per token), prefill 8192
#   fp8_gemv_tests   the GPU tests of the W8A16 FP8 GEMV and the FP8 linear layer
#   gemv_fp8         gemv_bench.py --fp8: W8A16 GEMV configs on DeepSeek shapes vs W8A8 and bf16 (table to $OUT)
#   gemv_fp8_in      install that table in this machine's tree
#   compare          one_batch.py eager vs CUDA graph vs torch.compile + graph at batch 1 / 32, ctx 1024
#   b1_nopdl         the same at batch 1 with programmatic dependent launch off (LMLANG_PDL=0)
#   fp8_backends     benchmarks/fp8_backends.py: bf16 / Triton / cuBLAS / FlashInfer / row-wise FP8 GEMM at
#                    M = 1..4096 on V3 and V2-Lite shapes (sets FLASHINFER_MAX_TOKENS); FP8_BUDGET_S
#   cache_out        tar the FlashInfer JIT cache and DeepGEMM's cubins into $OUT (carry it back as
#                    .cache/fi_cache.tgz)
set -u
OUT=${OUT:-/tmp/lmlang-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false FLASHINFER_WORKSPACE_BASE=$PWD
export TRTLLM_DG_CACHE_DIR=$PWD/.cache/deep_gemm  # FlashInfer's FP8 block GEMM (DeepGEMM) compiles its kernels here
export PYTHONPATH=/tmp/site
SUMMARY=()

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  SUMMARY+=("$(printf '%-16s rc=%-4s %5ss' "$name" "$rc" "$((SECONDS - t0))")")
  tail -n 40 "$OUT/$name.log"
}

setup() {
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl &&
    python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . &&
    if [ -f .cache/fi_cache.tgz ]; then tar -xzf .cache/fi_cache.tgz -C .cache; fi &&
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv &&
    python3 -c "import torch, triton, flashinfer; print(torch.__version__, triton.__version__, flashinfer.__version__)"
}

PYTEST=(python3 -m pytest -q -m gpu -p no:cacheprovider --timeout 300 -rs)
LLAMA=benchmarks/configs/llama31_8b.json

for s in "$@"; do
  case $s in
    setup) step setup 240 bash -c "$(declare -f setup); setup" ;;
    tests) step tests 420 "${PYTEST[@]}" tests/runtime/test_attention_backends.py tests/runtime/test_gpu_cuda_graph.py \
      tests/runtime/test_gpu_parity.py -s ;;
    tests_backends) step tests_backends 120 "${PYTEST[@]}" tests/runtime/test_attention_backends.py ;;
    kernels_tests) step kernels_tests 240 "${PYTEST[@]}" tests/kernels ;;
    kernels) step kernels 200 python3 benchmarks/kernels.py --out "$OUT/kernels.json" ;;
    one_batch_quick) step one_batch_quick 150 python3 benchmarks/one_batch.py --config $LLAMA \
      --out "$OUT/one_batch_quick.json" --batch 1,64 --ctx 1024 --prefill 8192 --compare-modes "" \
      --profile 1:1024,64:1024 ;;
    one_batch_triton) step one_batch_triton 150 python3 benchmarks/one_batch.py --config $LLAMA \
      --out "$OUT/one_batch_triton.json" --batch 1,64 --ctx 1024 --prefill 8192 --compare-modes "" \
      --profile 1:1024,64:1024 --attention-backend triton ;;
    one_batch) step one_batch 330 python3 benchmarks/one_batch.py --config $LLAMA --out "$OUT/one_batch.json" ;;
    one_batch_qwen) step one_batch_qwen 120 python3 benchmarks/one_batch.py --config benchmarks/configs/qwen3_8b.json \
      --out "$OUT/one_batch_qwen.json" --batch 1,64,256 --ctx 1024 --prefill 8192 --compare-modes "" ;;
    serving) step serving 240 python3 benchmarks/serving.py --config $LLAMA --out "$OUT/serving.json" \
      --dataset shared-prefix --prefix-caches radix,block,none --peer-hf ;;
    serving_random) step serving_random 200 python3 benchmarks/serving.py --config $LLAMA --out "$OUT/serving_random.json" \
      --dataset random --num-requests 256 --input-len 1024 --output-len 256 --prefix-caches radix ;;
    kernels_decode) step kernels_decode 90 python3 benchmarks/kernels.py --only decode_attention \
      --out "$OUT/kernels_decode.json" ;;
    gemv) step gemv 300 python3 benchmarks/gemv_bench.py --out "$OUT/gemv.json" ;;
    one_batch_gemv) step one_batch_gemv 150 env LMLANG_GEMV_CONFIG="$OUT/gemv.json" python3 benchmarks/one_batch.py \
      --config $LLAMA --out "$OUT/one_batch_gemv.json" --batch 1,64 --ctx 1024 --prefill 8192 --compare-modes "" \
      --profile 1:1024,64:1024 ;;
    mla_tests) step mla_tests 240 "${PYTEST[@]}" tests/runtime/test_mla_backend.py tests/kernels/test_mla_decode.py \
      tests/runtime/test_deepseek.py ;;
    mla) step mla 240 python3 benchmarks/kernels.py --only mla_decode,mla_decode_flashinfer,mla_decode_config \
      --out "$OUT/mla_decode.json" ;;
    mla_bench) step mla_bench 420 python3 benchmarks/mla_decode_bench.py --out "$OUT/mla_decode_bench.json" ;;
    moe_tests) step moe_tests 240 "${PYTEST[@]}" tests/kernels/test_fused_moe.py tests/runtime/test_moe.py ;;
    tune_moe_v2lite) step tune_moe_v2lite 320 python3 benchmarks/tune_fused_moe.py --models dsv2-lite --budget-s ${TUNE_BUDGET_S:-280} \
      --out-dir "$OUT/fused_moe" --out "$OUT/tune_v2lite.json" ;;
    tune_moe_v3) step tune_moe_v3 320 python3 benchmarks/tune_fused_moe.py --models dsv3 --budget-s ${TUNE_BUDGET_S:-280} \
      --out-dir "$OUT/fused_moe" --out "$OUT/tune_v3.json" ;;
    moe_tables_in) mkdir -p kernels/configs/fused_moe && cp "$OUT"/fused_moe/E=*.json kernels/configs/fused_moe/ ;;
    moe) step moe 240 python3 benchmarks/kernels.py --only fused_moe --rep-ms 30 --out "$OUT/kernels_moe.json" ;;
    tune_fp8) step tune_fp8 330 python3 benchmarks/tune_fp8_gemm.py --budget-s ${TUNE_BUDGET_S:-270} --out "$OUT/fp8_gemm.json" ;;
    fp8_tests) step fp8_tests 300 "${PYTEST[@]}" tests/kernels/test_fp8.py tests/kernels/test_fp8_flashinfer.py \
      tests/runtime/test_fp8.py ;;
    fp8_backends) step fp8_backends 300 python3 benchmarks/fp8_backends.py --budget-s ${FP8_BUDGET_S:-210} \
      --out "$OUT/fp8_backends.json" ;;
    tune_fp8_r2) step tune_fp8_r2 330 python3 benchmarks/tune_fp8_gemm.py --ms 1,64,4096 \
      --merge kernels/configs/fp8_gemm/device=NVIDIA_H200.json --out "$OUT/fp8_gemm_r2.json" ;;
    fp8_tables_in) cp "$OUT/fp8_gemm_r2.json" kernels/configs/fp8_gemm/device=NVIDIA_H200.json ;;
    fp8_cmp) step fp8_cmp 150 python3 benchmarks/tune_fp8_gemm.py --installed --ms 16,64,128,256,512,1024,4096 \
      --out "$OUT/fp8_cmp.json" ;;
    deepseek_e2e) step deepseek_e2e 420 python3 benchmarks/deepseek_e2e.py --out "$OUT/deepseek_e2e.json" ;;
    parity) step parity 300 "${PYTEST[@]}" tests/runtime/test_gpu_parity.py -s ;;
    sched_cost) step sched_cost 300 python3 benchmarks/scheduler_cost.py --config $LLAMA --out "$OUT/scheduler_cost.json" ;;
    runtime_tests) step runtime_tests 420 "${PYTEST[@]}" tests/runtime --deselect tests/runtime/test_gpu_parity.py ;;
    fast_tests) step fast_tests 420 "${PYTEST[@]}" tests/kernels/test_gemv.py tests/kernels/test_rotary.py \
      tests/kernels/test_rmsnorm.py tests/kernels/test_kv_store.py tests/kernels/test_activation.py \
      tests/kernels/test_decode_attention.py tests/runtime/test_attention_backends.py tests/runtime/test_gpu_cuda_graph.py ;;
    rope_tests) step rope_tests 300 "${PYTEST[@]}" tests/kernels/test_rotary.py tests/kernels/test_decode_attention.py \
      tests/runtime/test_attention_backends.py tests/runtime/test_gpu_cuda_graph.py ;;
    parity_trained) step parity_trained 400 "${PYTEST[@]}" tests/runtime/test_gpu_parity.py -k trained -s ;;
    decode_small) step decode_small 240 python3 benchmarks/kernels.py --only decode_attention_small \
      --out "$OUT/decode_small.json" ;;
    gemv_m1) step gemv_m1 420 python3 benchmarks/gemv_bench.py --m 1 --out "$OUT/gemv_m1.json" ;;
    b1) step b1 300 python3 benchmarks/one_batch.py --config $LLAMA --out "$OUT/b1.json" --batch 1,64 --ctx 1024 \
      --prefill 8192 --compare-modes "" --profile 1:1024 --engine-itl 1:1024 ;;
    decode_engine) step decode_engine 400 python3 benchmarks/one_batch.py --config $LLAMA --out "$OUT/decode_engine.json" \
      --batch 1,64,256 --ctx 1024 --prefill 8192 --compare-modes "" --engine-itl 1:1024,64:1024,256:1024 ;;
    fp8_gemv_tests) step fp8_gemv_tests 300 "${PYTEST[@]}" tests/kernels/test_gemv_fp8.py tests/runtime/test_fp8.py ;;
    gemv_fp8) step gemv_fp8 400 python3 benchmarks/gemv_bench.py --fp8 --out "$OUT/gemv_fp8.json" ;;
    gemv_fp8_in) cp "$OUT/gemv_fp8.json" kernels/configs/gemv_fp8_NVIDIA_H200.json ;;
    compare) step compare 560 python3 benchmarks/one_batch.py --config $LLAMA --out "$OUT/compare.json" --batch 1 \
      --ctx 1024 --prefill "" --compare 1,32 --compare-modes eager,graph,compile ;;
    b1_nopdl) step b1_nopdl 200 env LMLANG_PDL=0 python3 benchmarks/one_batch.py --config $LLAMA --out "$OUT/b1_nopdl.json" \
      --batch 1 --ctx 1024 --prefill "" --compare-modes "" --profile 1:1024 --engine-itl 1:1024 ;;
    cache_out) step cache_out 60 tar -czf "$OUT/fi_cache.tgz" -C .cache flashinfer $(cd .cache && ls -d deep_gemm 2>/dev/null) ;;
    bundle) (cd "$OUT" && tar -czf bundle.tgz --remove-files $(ls -d *.log *.json */ 2>/dev/null)) ;;  # one file back, not many
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
echo "== summary =="
printf '%s\n' "${SUMMARY[@]}"
ls -la "$OUT"
