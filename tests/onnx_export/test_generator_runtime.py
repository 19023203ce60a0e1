"""OnnxGenerator end to end on a tiny exported Llama + a tiny word-level tokenizer: registry, chat format, stops."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("torch", reason="torch is in the train extra")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

from kairos.engine.interfaces import TextGenerator  # noqa: E402
from kairos.engine.safety import SafetyFilter, safe_generate  # noqa: E402
from kairos.models.generator import GenerationCancelled, GenerationConfig, OnnxGenerator  # noqa: E402
from kairos.models.registry import publish_model  # noqa: E402
from kairos.onnx_export.generator_export import export_causal_lm, generator_config, tiny_llama  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]


def tiny_tokenizer(vocab_size: int = 128) -> Tokenizer:
    words = ["system", "user", "assistant", "write", "copy", "for", "blue", "jeans", "red", "dress", "a", "the"]
    words += [f"w{i}" for i in range(vocab_size - len(SPECIAL) - len(words))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIAL + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(SPECIAL)
    return tok


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    model = tiny_llama(seed=5)
    onnx_path = export_causal_lm(model, tmp / "lm.onnx")
    tok_path = tmp / "tokenizer.json"
    tiny_tokenizer().save(str(tok_path))
    config = {**generator_config(model.config), "tokenizer": "tokenizer.json", "eos_token_ids": [2], "pad_token_id": 2}
    publish_model(tmp / "models", "generator", "1", "generator", onnx_path, assets=[tok_path], config=config)
    return OnnxGenerator.from_dir(tmp / "models")


def test_generator_satisfies_the_engine_protocol(generator):
    assert isinstance(generator, TextGenerator)
    assert generator.version == "1"


def test_whole_word_is_a_word_the_tokenizer_holds_as_one_token(generator):
    """The copy checks ask it (engine/copywriting.py ``garbled_name``); an unknown word is one token here too
    (the word-level tokenizer's ``[UNK]``) and must not count."""
    assert generator.whole_word("jeans") and generator.whole_word("Jeans")
    assert not generator.whole_word("jaens")


def test_generate_returns_one_text_per_prompt(generator):
    result = generator.generate_detailed(["write copy for blue jeans", "red dress"], max_new_tokens=6)
    assert len(result.texts) == 2
    assert all(len(t) <= 6 for t in result.tokens)
    assert result.texts[0] == generator.tokenizer.decode(result.tokens[0], skip_special_tokens=True).strip()


def test_stop_sequence_cuts_the_text(generator):
    free = generator.generate_detailed(["write copy for blue jeans"], max_new_tokens=8)
    words = free.texts[0].split()
    if len(words) < 3:
        pytest.skip("the random model ended too early to place a stop word")
    stop = words[2]
    cfg = GenerationConfig(stop_sequences=(stop,))
    cut = generator.generate_detailed(["write copy for blue jeans"], max_new_tokens=8, config=cfg)
    assert cut.finish_reasons == ["stop"]
    assert stop not in cut.texts[0] and free.texts[0].startswith(cut.texts[0])


def test_sampled_generation_through_the_safety_filter(generator):
    cfg = GenerationConfig(do_sample=True, top_k=20, top_p=0.9, temperature=0.8, seed=0)
    gen = lambda prompts: generator.generate(prompts, max_new_tokens=5, config=cfg)  # noqa: E731
    out = safe_generate(gen, ["write copy for red dress"], ["Red dress."], SafetyFilter())
    assert out[0].source in ("generated", "regenerated", "template") and out[0].text


class CancelAfter(threading.Event):
    """An event that reads as set from its ``n``-th check on: a cancel arriving while a batch decodes."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n or super().is_set()


def test_a_cancelled_generation_stops_at_its_next_step_and_raises(generator):
    config = GenerationConfig(max_new_tokens=12)
    with pytest.raises(GenerationCancelled, match="after 3 of at most 12 steps"):
        generator.generate(["write copy for blue jeans", "red dress"], config=config, max_new_tokens=12, cancel=CancelAfter(4))
    done = threading.Event()
    done.set()
    with pytest.raises(GenerationCancelled, match="after 0 of"):  # set before the call: no step at all
        generator.generate(["red dress"], max_new_tokens=12, cancel=done)
    # an event that is never set changes nothing
    assert generator.generate(["red dress"], max_new_tokens=6, cancel=threading.Event()) == generator.generate(["red dress"], max_new_tokens=6)


def test_each_new_tokens_logprob_is_the_models_own(generator):
    """The log-probability recorded per new token is the model's softmax before the repetition penalty,
    temperature and top-k that picked it: teacher-forcing the same tokens gives the same sum."""
    from kairos.models.generator import chatml
    from kairos.onnx_export.evaluate import _teacher_forced

    cfg = GenerationConfig(do_sample=True, temperature=1.5, top_k=10, repetition_penalty=1.3, seed=3)
    result = generator.generate_detailed(["write copy for blue jeans"], max_new_tokens=6, config=cfg)
    tokens = result.tokens[0]
    if not tokens:
        pytest.skip("the random model ended at once")
    assert len(result.logprobs[0]) == len(tokens) and all(lp <= 0.0 for lp in result.logprobs[0])
    prompt = generator.tokenizer.encode(chatml("write copy for blue jeans", generator.system_prompt),
                                        add_special_tokens=False).ids  # fmt: skip
    nll, count = _teacher_forced(generator.decoder, [prompt], [tokens])
    assert count == len(tokens) and sum(result.logprobs[0]) == pytest.approx(-nll, abs=1e-3)
    texts, means = generator.generate_scored(["write copy for blue jeans"], max_new_tokens=6, config=cfg)
    assert texts == result.texts and means == pytest.approx([-nll / count], abs=1e-4)  # the same seed, the same draw
