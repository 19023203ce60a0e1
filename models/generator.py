"""Text generation with onnxruntime: tokenizer (``tokenizers``) + a batched decoding loop over a KV-cache graph.

The graph is the one written by ``kairos.onnx_export.generator_export``: it takes ``input_ids``,
``attention_mask``, ``position_ids`` and the flat past cache and returns the last position's ``logits`` and the
present cache. Prompts of different lengths are left-padded; the attention mask hides the padding and position ids
count real tokens only, so a padded row decodes exactly like the same prompt alone. Finished rows are dropped from
the batch (their cache rows too), so a long straggler does not make the others pay.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kairos.models.registry import HandleBacked, LoadedModel, ModelHandle
from kairos.models.session import SessionOptions

log = logging.getLogger(__name__)

GENERATOR_NAME = "generator"


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. ``do_sample=False`` is greedy (temperature/top-k/top-p are then ignored).

    ``time_budget_s`` stops the whole batch after that many seconds (rows keep what they have); a stop sequence
    ends a row and is cut from its text.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_sequences: tuple[str, ...] = ()
    time_budget_s: float | None = None
    seed: int | None = None


class GenerationCancelled(Exception):
    """A generation call was cancelled (its ``cancel`` event set) before it finished; its rows are dropped."""


@dataclass
class GenerationResult:
    """New token ids per row, and why generation stopped (``eos``, ``stop``, ``length`` or ``time``).

    ``logprobs``: per row, the natural log-probability the model itself gave each new token (its softmax before any
    repetition penalty, temperature or top-k/p cut), so a sampled text can be told from a likely one."""

    tokens: list[list[int]]
    finish_reasons: list[str]
    prefill_s: float = 0.0
    total_s: float = 0.0
    steps: int = 0
    texts: list[str] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)

    def mean_logprobs(self) -> list[float]:
        """Per row, the mean log-probability of its new tokens (0.0 for a row with none)."""
        return [float(np.mean(row)) if row else 0.0 for row in self.logprobs]


class KVCacheDecoder:
    """The decoding loop over one ONNX session (no tokenizer: ids in, ids out).

    ``num_layers``, ``num_kv_heads`` and ``head_dim`` describe the cache inputs; ``eos_token_ids`` end a row.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        eos_token_ids: Sequence[int] = (),
        pad_token_id: int = 0,
        use_io_binding: bool = True,
    ):
        self.session = session
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.eos_token_ids = frozenset(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.use_io_binding = use_io_binding
        self._cache_device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.past_names = [f"past_{k}_{i}" for i in range(num_layers) for k in ("key", "value")]
        self.output_names = ["logits"] + [f"present_{k}_{i}" for i in range(num_layers) for k in ("key", "value")]

    def generate(
        self, prompts: Sequence[Sequence[int]], config: GenerationConfig = GenerationConfig(), stop_check=None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Generate for a batch of token-id prompts. ``stop_check(row, tokens) -> bool`` ends a row early.
        ``cancel``: checked before every decoding step; once set, :class:`GenerationCancelled` is raised (a
        stopping process does not wait for a batch that takes seconds)."""
        start = time.perf_counter()
        rng = np.random.default_rng(config.seed)
        n = len(prompts)
        ids, mask = self._left_pad(prompts)
        positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
        past = [np.zeros((n, self.num_kv_heads, 0, self.head_dim), np.float32) for _ in self.past_names]
        history = [list(p) for p in prompts]  # for the repetition penalty
        out: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        reasons = ["length"] * n
        active = np.arange(n)
        step_ids, step_pos, prefill_s, steps = ids, positions, 0.0, 0
        while len(active) and steps < config.max_new_tokens:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(f"cancelled after {steps} of at most {config.max_new_tokens} steps")
            logits, past = self._step(step_ids, mask, step_pos, past)
            if steps == 0:
                prefill_s = time.perf_counter() - start
            steps += 1
            chosen = self._choose(logits, [history[r] for r in active], config, rng)
            chosen_logprobs = _logprobs_of(logits, chosen)
            keep = []
            for j, (row, token) in enumerate(zip(active, chosen)):
                token = int(token)
                if token in self.eos_token_ids:
                    reasons[row] = "eos"
                    continue
                out[row].append(token)
                logprobs[row].append(float(chosen_logprobs[j]))
                history[row].append(token)
                if stop_check is not None and stop_check(row, out[row]):
                    reasons[row] = "stop"
                    continue
                keep.append(j)
            if config.time_budget_s is not None and time.perf_counter() - start > config.time_budget_s:
                for j in keep:
                    reasons[active[j]] = "time"
                break
            last_pos = step_pos[:, -1]
            if len(keep) < len(active):  # drop finished rows (copying the cache only when a row ended)
                keep = np.asarray(keep, dtype=np.int64)
                active, mask, last_pos = active[keep], mask[keep], last_pos[keep]
                past = [_as_numpy(p)[keep] for p in past]
            step_ids = np.asarray([[out[r][-1]] for r in active], dtype=np.int64).reshape(len(active), 1)
            step_pos = (last_pos + 1).reshape(-1, 1)
            mask = np.concatenate([mask, np.ones((len(active), 1), np.int64)], axis=1)
        return GenerationResult(out, reasons, prefill_s, time.perf_counter() - start, steps, logprobs=logprobs)

    def _left_pad(self, prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), self.pad_token_id, np.int64)
        mask = np.zeros((len(prompts), width), np.int64)
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError("empty prompt")
            ids[i, width - len(p) :] = p
            mask[i, width - len(p) :] = 1
        return ids, mask

    def _step(self, ids, mask, positions, past):
        """One forward pass. The cache stays in onnxruntime ``OrtValue`` s between steps (IOBinding): no numpy
        round trip per step on the CPU, and on CUDA the cache never leaves the GPU."""
        if not self.use_io_binding:
            feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
            feeds.update(zip(self.past_names, (_as_numpy(p) for p in past)))
            logits, *present = self.session.run(self.output_names, feeds)
            return logits, present
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions))
        for name, value in zip(self.past_names, past):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.output_names[1:]:
            binding.bind_output(name, self._cache_device)
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy(), present

    @staticmethod
    def _choose(logits: np.ndarray, histories, config: GenerationConfig, rng) -> np.ndarray:
        logits = logits.astype(np.float32, copy=True)
        if config.repetition_penalty != 1.0:
            apply_repetition_penalty(logits, histories, config.repetition_penalty)
        if not config.do_sample:
            return logits.argmax(axis=1)
        return sample(logits, config, rng)


def _logprobs_of(logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Per row, ``log softmax(logits)[chosen]``: the model's own log-probability of the token picked."""
    rows = np.arange(len(chosen))
    top = logits.max(axis=1)
    log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return logits[rows, np.asarray(chosen, dtype=np.int64)] - log_norm


def _as_numpy(value) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


def apply_repetition_penalty(logits: np.ndarray, histories, penalty: float) -> None:
    """CTRL-style penalty (as in transformers): seen tokens' positive logits / penalty, negative ones * penalty."""
    for row, seen in enumerate(histories):
        idx = np.unique(np.asarray(seen, dtype=np.int64))
        vals = logits[row, idx]
        logits[row, idx] = np.where(vals > 0, vals / penalty, vals * penalty)


#: Decoding of a retry (a blocked text regenerated): sampling, moderately conservative, so the retry differs from
#: the greedy first try but stays on topic; ``seed=None`` draws a fresh seed per call.
RETRY_SAMPLING = {"do_sample": True, "temperature": 0.8, "top_p": 0.9, "seed": None}


def sample(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> np.ndarray:
    """Temperature, then top-k, then top-p (nucleus) filtering, then one draw per row."""
    logits = logits / max(config.temperature, 1e-5)
    if config.top_k and config.top_k < logits.shape[1]:
        kth = np.partition(logits, -config.top_k, axis=1)[:, -config.top_k][:, None]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = _softmax(logits)
    if config.top_p < 1.0:
        order = np.argsort(-probs, axis=1)
        sorted_p = np.take_along_axis(probs, order, axis=1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop_sorted = (np.cumsum(sorted_p, axis=1) - sorted_p) >= config.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=1, keepdims=True)
    cumulative = probs.cumsum(axis=1)
    draws = rng.random((len(probs), 1)) * cumulative[:, -1:]
    return (cumulative < draws).sum(axis=1).clip(max=probs.shape[1] - 1)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- chat formatting + tokenizer + registry: the TextGenerator the engine calls ---

CHATML_SYSTEM = "You are a concise e-commerce copywriter."


def chatml(user: str, system: str = CHATML_SYSTEM) -> str:
    """SmolLM2's chat format (ChatML) with the assistant turn opened."""
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


class OnnxGenerator(HandleBacked):
    """``TextGenerator`` over the registry's ``generator`` model: chat-formats, tokenizes, decodes, detokenizes.

    >>> # gen = OnnxGenerator.from_dir("var/models"); gen.generate(["Write one line about blue jeans."])
    """

    def __init__(self, handle: ModelHandle, defaults: GenerationConfig = GenerationConfig(max_new_tokens=64)):
        from tokenizers import Tokenizer

        self.handle = handle
        self.defaults = defaults
        self._loaded: LoadedModel | None = None
        self.tokenizer: Tokenizer
        self._whole_words: dict[str, bool] = {}
        self._bind(handle.current)

    @classmethod
    def from_dir(cls, model_dir: str | Path, name: str = GENERATOR_NAME, options: SessionOptions | None = None, **kw):
        return cls(ModelHandle(Path(model_dir), name, options, expect_kind="generator"), **kw)

    def _bind(self, loaded: LoadedModel) -> None:
        from tokenizers import Tokenizer

        cfg = loaded.manifest.config
        self.tokenizer = Tokenizer.from_file(str(loaded.asset(cfg.get("tokenizer", "tokenizer.json"))))
        self.system_prompt = cfg.get("system_prompt", CHATML_SYSTEM)
        self.decoder = KVCacheDecoder(
            loaded.session, cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"],
            eos_token_ids=cfg.get("eos_token_ids", ()), pad_token_id=cfg.get("pad_token_id", 0),
        )
        self._loaded = loaded
        self._whole_words = {}

    def whole_word(self, word: str) -> bool:
        """Whether the tokenizer holds ``word`` (after a space, in lower case or capitalised) as one token: a
        spelling the model learned as a word. One it writes in several pieces may be a rare word, or a word the
        model assembled wrongly ("hangling" for "hanging"; the copy checks, engine/copywriting.py)."""
        known = self._whole_words.get(word)
        if known is None:
            if len(self._whole_words) >= 100_000:
                self._whole_words.clear()
            pieces = self.tokenizer.encode_batch([f" {word.lower()}", f" {word.capitalize()}"], add_special_tokens=False)
            # One token that decodes back to the word: a tokenizer with an unknown-word token maps any word to one.
            known = self._whole_words[word] = any(
                len(e.ids) == 1 and self.tokenizer.decode(e.ids).strip().lower() == word.lower() for e in pieces
            )
        return known

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64, config: GenerationConfig | None = None,
                 raw: bool = False, sample: bool = False, cancel: threading.Event | None = None) -> list[str]:
        """Generate one text per prompt. Prompts are wrapped in the chat format unless ``raw``. ``sample`` (without
        ``config``): the defaults with :data:`RETRY_SAMPLING` decoding, a fresh seed each call. ``cancel``: see
        :meth:`KVCacheDecoder.generate` (:class:`GenerationCancelled` once it is set)."""
        return self.generate_scored(prompts, max_new_tokens=max_new_tokens, config=config, raw=raw, sample=sample,
                                    cancel=cancel)[0]

    def generate_scored(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                        config: GenerationConfig | None = None, raw: bool = False, sample: bool = False,
                        cancel: threading.Event | None = None) -> tuple[list[str], list[float]]:
        """:meth:`generate`, and per text the mean log-probability the model gave its tokens (how likely the model
        itself finds it: a sampled text that wandered off scores far below a greedy one)."""
        if sample and config is None:
            config = replace(self.defaults, **RETRY_SAMPLING)
        result = self.generate_detailed(prompts, max_new_tokens=max_new_tokens, config=config, raw=raw, cancel=cancel)
        return result.texts, result.mean_logprobs()

    def generate_detailed(self, prompts: Sequence[str], *, max_new_tokens: int = 64,
                          config: GenerationConfig | None = None, raw: bool = False,
                          cancel: threading.Event | None = None) -> GenerationResult:
        config = replace(config or self.defaults, max_new_tokens=max_new_tokens)
        texts = [p if raw else chatml(p, self.system_prompt) for p in prompts]
        ids = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        stops = config.stop_sequences

        def stop_check(row: int, tokens: list[int]) -> bool:
            tail = self.tokenizer.decode(tokens[-8:], skip_special_tokens=True)
            return any(s in tail for s in stops)

        result = self.decoder.generate(ids, config, stop_check if stops else None, cancel)
        result.texts = [self._finish(t, stops) for t in result.tokens]
        return result

    def _finish(self, tokens: list[int], stops: tuple[str, ...]) -> str:
        # A byte-level BPE cut by max_new_tokens can end inside a multi-byte (e.g. Chinese) character: drop the
        # replacement characters that leaves, and the unknown-token marker.
        text = self.tokenizer.decode(tokens, skip_special_tokens=True).replace("\ufffd", "").replace("<UNK>", "")
        for s in stops:
            if s in text:
                text = text[: text.index(s)]
        return text.strip()
