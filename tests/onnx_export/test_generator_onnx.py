"""The ONNX KV-cache decoding loop against transformers' generate on the same tiny random Llama."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is in the train extra")
pytest.importorskip("transformers")

from kairos.models.generator import GenerationConfig, KVCacheDecoder, sample  # noqa: E402
from kairos.models.session import SessionOptions, create_session  # noqa: E402
from kairos.onnx_export.generator_export import export_causal_lm, generator_config, tiny_llama  # noqa: E402

PROMPTS = [[5, 17, 33, 9, 40, 41], [7, 8], [99, 3, 12, 64]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_llama(seed=3)
    path = export_causal_lm(model, tmp_path_factory.mktemp("lm") / "lm.onnx")
    session = create_session(path, SessionOptions(device="cpu", intra_op_threads=1))
    cfg = generator_config(model.config)
    decoder = KVCacheDecoder(session, cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"], eos_token_ids=(), pad_token_id=0)
    return model, decoder


def _hf_greedy(model, prompt, n, **kw):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, eos_token_id=None, **kw)
    return out[0, len(prompt):].tolist()


def test_greedy_tokens_equal_transformers_generate_batched(tiny):
    model, decoder = tiny
    result = decoder.generate(PROMPTS, GenerationConfig(max_new_tokens=12))
    for prompt, got in zip(PROMPTS, result.tokens):
        assert got == _hf_greedy(model, prompt, 12), f"prompt {prompt}"
    assert result.finish_reasons == ["length"] * 3


def test_repetition_penalty_matches_transformers(tiny):
    model, decoder = tiny
    result = decoder.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=10, repetition_penalty=1.3))
    assert result.tokens[0] == _hf_greedy(model, PROMPTS[0], 10, repetition_penalty=1.3)


def test_eos_and_stop_check_end_rows_early(tiny):
    model, decoder = tiny
    free = decoder.generate(PROMPTS, GenerationConfig(max_new_tokens=8)).tokens
    eos = free[1][2]
    decoder_eos = KVCacheDecoder(decoder.session, decoder.num_layers, decoder.num_kv_heads, decoder.head_dim, eos_token_ids=[eos])
    r = decoder_eos.generate(PROMPTS, GenerationConfig(max_new_tokens=8))
    assert r.finish_reasons[1] == "eos" and r.tokens[1] == free[1][: free[1].index(eos)]
    r = decoder.generate(PROMPTS, GenerationConfig(max_new_tokens=8), stop_check=lambda row, toks: row == 0 and len(toks) == 3)
    assert r.finish_reasons[0] == "stop" and len(r.tokens[0]) == 3 and r.tokens[2] == free[2]


def test_time_budget_stops_generation(tiny):
    _, decoder = tiny
    r = decoder.generate(PROMPTS, GenerationConfig(max_new_tokens=200, time_budget_s=0.0))
    assert r.steps == 1 and set(r.finish_reasons) == {"time"}


def test_sampling_is_seeded_and_respects_top_k():
    rng_logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32)
    cfg = GenerationConfig(do_sample=True, top_k=3, temperature=0.7, seed=1)
    top3 = np.argsort(-rng_logits, axis=1)[:, :3]
    draws = np.stack([sample(rng_logits, cfg, np.random.default_rng(s)) for s in range(200)], axis=1)
    for row in range(4):
        assert set(draws[row]) <= set(top3[row])
    a = sample(rng_logits, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a, sample(rng_logits, cfg, np.random.default_rng(5)))


def test_top_p_keeps_only_the_nucleus():
    logits = np.log(np.array([[0.6, 0.3, 0.05, 0.05]], dtype=np.float32))
    cfg = GenerationConfig(do_sample=True, top_p=0.8)
    draws = {int(sample(logits, cfg, np.random.default_rng(s))[0]) for s in range(300)}
    assert draws == {0, 1}


def test_plain_run_and_io_binding_paths_agree(tiny):
    _, decoder = tiny
    plain = KVCacheDecoder(decoder.session, decoder.num_layers, decoder.num_kv_heads, decoder.head_dim,
                           use_io_binding=False)
    cfg = GenerationConfig(max_new_tokens=6)
    assert plain.generate(PROMPTS, cfg).tokens == decoder.generate(PROMPTS, cfg).tokens
