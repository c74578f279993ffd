"""Model families against transformers, in float32 on CPU, through the real KV-cache path.

Each test drives the model with hand-built `ForwardBatch`es over the torch attention backend and
an `MHAKVPool`: a ragged prefill of several prompts, and a prefix prefill followed by an extend
and single-token decode steps, must all reproduce transformers' full-prompt logits.
"""

from __future__ import annotations

import pytest
import torch

from lmlang.runtime.attention.base import create_backend
from lmlang.runtime.cache.kv_pool import MHAKVPool
from lmlang.runtime.forward_batch import ForwardBatch, ForwardMode
from lmlang.runtime.layers.rotary import get_rope
from lmlang.runtime.model_loader import load_model
from lmlang.runtime.models.base import KVCacheSpec
from lmlang.testing import make_tiny_checkpoint

ATOL = 1e-4
MAX_SEQ_LEN = 128  # KV slots reserved per sequence in these tests
PROMPTS = [
    [5, 17, 300, 42, 9],
    list(range(100, 170)),  # long enough for the rope-scaling bands to matter
    [7, 260, 261, 262, 263, 11, 400, 3, 8, 9, 10, 500, 12],
]
LLAMA_VARIANTS = {  # config overrides of the tiny llama checkpoint
    "rope_linear": {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "rope_llama3": {
        "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    },
    "rope_yarn": {
        "rope_scaling": {
            "rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 64,  # 2048 / 64
            "mscale": 1.0, "mscale_all_dim": 0.5,
        }
    },
    "biases": {"attention_bias": True, "mlp_bias": True},
}


class KVSession:
    """A minimal model runner: fixed, shuffled KV slots per sequence; builds each ForwardBatch."""

    def __init__(self, model: torch.nn.Module, num_seqs: int) -> None:
        spec = model.kv_cache_spec()
        num_slots = num_seqs * MAX_SEQ_LEN
        self.model = model
        self.pool = MHAKVPool(num_slots, spec.num_layers, spec.num_kv_heads, spec.head_dim, torch.float32, "cpu")
        self.backend = create_backend("torch")
        slots = torch.randperm(num_slots, generator=torch.Generator().manual_seed(0)) + 1  # slots 1..num_slots
        self.slot_table = slots.view(num_seqs, MAX_SEQ_LEN)
        self.lens = [0] * num_seqs

    def forward(self, new_tokens: dict[int, list[int]]) -> list[torch.Tensor]:
        """Runs one forward over `{seq index: new token ids}`; returns each sequence's logits."""
        seqs = list(new_tokens)
        prefix = [self.lens[i] for i in seqs]
        seq_lens = [p + len(new_tokens[i]) for i, p in zip(seqs, prefix)]
        positions = torch.cat([torch.arange(p, s) for p, s in zip(prefix, seq_lens)])
        kv_indices = torch.cat([self.slot_table[i, :s] for i, s in zip(seqs, seq_lens)])
        out_cache_loc = torch.cat([self.slot_table[i, p:s] for i, p, s in zip(seqs, prefix, seq_lens)])
        extend = [s - p for p, s in zip(prefix, seq_lens)]
        decode = all(n == 1 for n in extend) and all(prefix)
        batch = ForwardBatch(
            mode=ForwardMode.DECODE if decode else ForwardMode.EXTEND,
            input_ids=torch.tensor([t for i in seqs for t in new_tokens[i]], dtype=torch.int64),
            positions=positions,
            out_cache_loc=out_cache_loc,
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
            prefix_lens=torch.tensor(prefix, dtype=torch.int32),
            qo_indptr=torch.tensor([0, *torch.tensor(extend).cumsum(0).tolist()], dtype=torch.int32),
            kv_indptr=torch.tensor([0, *torch.tensor(seq_lens).cumsum(0).tolist()], dtype=torch.int32),
            kv_indices=kv_indices,
            seq_lens_cpu=seq_lens,
            prefix_lens_cpu=prefix,
            kv_pool=self.pool,
            attn_backend=self.backend,
        )
        self.backend.plan(batch)
        with torch.no_grad():
            logits = self.model.compute_logits(self.model(batch))
        for i, s in zip(seqs, seq_lens):
            self.lens[i] = s
        return list(logits.split(extend))


def hf_logits(path: str, prompts: list[list[int]], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    with torch.no_grad():
        return [model(torch.tensor([p])).logits[0].float() for p in prompts]


@pytest.fixture(scope="module")
def checkpoint(tiny_ckpt, tmp_path_factory):
    """`checkpoint(arch, variant="")`: the session's tiny checkpoint, or a llama with LLAMA_VARIANTS overrides."""
    made: dict = {}

    def get(arch: str, variant: str = "") -> str:
        if not variant:
            return tiny_ckpt(arch)
        if (arch, variant) not in made:
            path = tmp_path_factory.mktemp(f"{arch}_{variant}")
            made[arch, variant] = make_tiny_checkpoint(path, arch, **LLAMA_VARIANTS[variant])
        return made[arch, variant]

    return get


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_ragged_prefill_then_extend_and_decode_match_transformers(checkpoint, arch):
    path = checkpoint(arch)
    reference = hf_logits(path, PROMPTS)
    model, _ = load_model(path, dtype=torch.float32)

    full = KVSession(model, len(PROMPTS)).forward(dict(enumerate(PROMPTS)))
    for ours, ref in zip(full, reference):
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)

    # prompt 0 and 2 in pieces: a prefix, an extend over it, then one token per step;
    # prompt 1 joins late with a full prefill mixed into the others' extend
    session = KVSession(model, len(PROMPTS))
    steps = [{0: PROMPTS[0][:2], 2: PROMPTS[2][:6]}, {0: PROMPTS[0][2:4], 2: PROMPTS[2][6:10], 1: PROMPTS[1]}]
    steps += [{0: [PROMPTS[0][4]], 2: [PROMPTS[2][10]]}, {2: [PROMPTS[2][11]]}, {2: [PROMPTS[2][12]]}]
    got: dict = {0: [], 1: [], 2: []}
    for step in steps:
        for seq, logits in zip(step, session.forward(step)):
            got[seq].append(logits)
    for seq, ref in enumerate(reference):
        torch.testing.assert_close(torch.cat(got[seq]), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", sorted(LLAMA_VARIANTS))
def test_llama_variants_match_transformers(checkpoint, variant):
    path = checkpoint("llama", variant)
    model, _ = load_model(path, dtype=torch.float32)
    ours = KVSession(model, len(PROMPTS)).forward(dict(enumerate(PROMPTS)))
    for got, ref in zip(ours, hf_logits(path, PROMPTS)):
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_tied_embeddings_share_one_parameter(checkpoint):
    model, config = load_model(checkpoint("qwen2"), dtype=torch.float32)
    assert config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in dict(model.named_parameters())


def test_kv_cache_spec_uses_config_head_dim(checkpoint):
    model, _ = load_model(checkpoint("qwen3"), dtype=torch.float32)
    assert model.kv_cache_spec() == KVCacheSpec(num_layers=2, num_kv_heads=2, head_dim=32, v_head_dim=32)


def test_rotary_is_applied_by_position_index():
    rope = get_rope(head_dim=8, rotary_dim=8, max_position=64, base=10000.0)
    q, k = torch.randn(5, 2, 8), torch.randn(5, 1, 8)
    positions = torch.tensor([3, 0, 40, 3, 7])
    q_out, k_out = rope(positions, q, k)
    for row, pos in enumerate(positions.tolist()):  # each row alone gives the same result
        q_one, k_one = rope(torch.tensor([pos]), q[row : row + 1], k[row : row + 1])
        torch.testing.assert_close(q_out[row], q_one[0])
        torch.testing.assert_close(k_out[row], k_one[0])
    torch.testing.assert_close(q_out[1], q[1])  # position 0 is the identity
    torch.testing.assert_close(q_out.norm(dim=-1), q.norm(dim=-1))  # a rotation keeps norms


def test_rotary_partial_and_interleaved():
    rope = get_rope(head_dim=8, rotary_dim=4, max_position=16, base=100.0, is_neox_style=False)
    q = torch.randn(3, 1, 8)
    q_out, _ = rope(torch.tensor([1, 2, 3]), q, q)
    torch.testing.assert_close(q_out[..., 4:], q[..., 4:])  # features past rotary_dim pass through
    pairs_in = q[..., :4].reshape(3, 1, 2, 2).norm(dim=-1)  # interleaved: (0, 1) and (2, 3) rotate together
    torch.testing.assert_close(q_out[..., :4].reshape(3, 1, 2, 2).norm(dim=-1), pairs_in)


def test_dynamic_rope_covers_the_extended_context_and_unknown_types_fail():
    rope = get_rope(16, 16, 32, 10000.0, {"rope_type": "dynamic", "factor": 4.0})
    assert rope.cos_sin_cache.shape == (128, 16)
    same = get_rope(16, 16, 32, 10000.0, {"type": "dynamic", "factor": 1.0})
    torch.testing.assert_close(same.cos_sin_cache, get_rope(16, 16, 32, 10000.0).cos_sin_cache)
    with pytest.raises(ValueError, match="unsupported rope scaling type 'longrope'"):
        get_rope(16, 16, 32, 10000.0, {"rope_type": "longrope"})
