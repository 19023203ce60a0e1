"""Latency and throughput benchmarks: onnxruntime (fp32, int8) vs torch eager. Each prints one JSON object last."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _percentiles(fn: Callable[[], object], iterations: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def machine() -> dict:
    import onnxruntime as ort

    from kairos.models.session import gpu_present

    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "gpu_present": gpu_present()}


def bench_ranker(threads: int = 2, batches=(1, 32, 256, 1024), device: str = "cpu", say=print) -> dict:
    """p50/p99 ms per batch size: ORT fp32, ORT int8 and torch eager on the production architecture.

    Latency does not depend on the trained weights, so a freshly initialised network of the served architecture is
    exported here; that keeps the benchmark runnable before ``kairos models build``.
    """
    import torch

    from kairos.models.session import SessionOptions, create_session
    from kairos.onnx_export.ranker_export import export_ranker, quantize_int8
    from kairos.onnx_export.ranker_model import DeepFMCrossRanker, example_inputs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DeepFMCrossRanker().eval()
    result: dict = {"benchmark": "ranker", "threads": threads, **machine()}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_ranker(model, Path(tmp) / "r.onnx")
        int8 = quantize_int8(fp32, Path(tmp) / "r8.onnx")
        opts = SessionOptions(device=device, intra_op_threads=threads)
        sessions = {"onnx": create_session(fp32, opts), "onnx_int8": create_session(int8, opts)}
        result["provider"] = sessions["onnx"].get_providers()[0]
        torch_device = "cuda" if device == "cuda" else "cpu"
        model = model.to(torch_device)
        for b in batches:
            inputs = example_inputs(b, seed=b)
            feeds = {k: v.numpy() for k, v in inputs.items()}
            on_device = {k: v.to(torch_device) for k, v in inputs.items()}
            iters = 200 if b <= 32 else (100 if b <= 256 else 40)
            for name, sess in sessions.items():
                p50, p99 = _percentiles(lambda s=sess: s.run(None, feeds), iters)
                result[f"{name}_p50_ms_b{b}"], result[f"{name}_p99_ms_b{b}"] = round(p50, 4), round(p99, 4)

            def torch_call():
                with torch.inference_mode():
                    out = model(**on_device)
                if torch_device == "cuda":
                    torch.cuda.synchronize()
                return out

            p50, p99 = _percentiles(torch_call, iters)
            result[f"torch_p50_ms_b{b}"], result[f"torch_p99_ms_b{b}"] = round(p50, 4), round(p99, 4)
            say(f"b{b}: onnx p50 {result[f'onnx_p50_ms_b{b}']:.3f} ms, int8 {result[f'onnx_int8_p50_ms_b{b}']:.3f} ms, "
                f"torch {result[f'torch_p50_ms_b{b}']:.3f} ms")
    return result


BENCH_PROMPTS = [
    "Write a short product description for this shopper.\nProduct: Roadster Men Blue Slim Fit Jeans\nBrand: Roadster"
    "\nColour: Blue\nPrice: 1299 INR\nShopper interests: denim, casual",
    "根据商品属性写一段广告文案。\n属性：类型#上衣*颜色#白色*风格#休闲\n顾客偏好：白色、休闲",
    "Summarize in one line:\nLove this dress! It's so pretty and the length is perfect, hits just below the knee.",
    "Write a one-sentence ad for this shopper.\nProduct: Linen Shirt\nBrand: Mango\nColour: White\nShopper interests: summer",
]


def bench_generator(model_dir: Path, new_tokens: int = 64, threads: int = 2, batches=(1, 16), say=print,
                    cache_dir: Path | None = None, variants=("generator", "generator_int8"), rounds: int = 2,
                    spinning: bool = False) -> dict:
    """Tokens/s and first-token ms, greedy, exactly ``new_tokens`` per row: ORT (KV-cache loop) vs torch eager
    ``generate`` on the same architecture (SmolLM2-135M weights from the GGUF), same prompts, same threads.

    The machines this runs on are shared and noisy, so backends are measured in interleaved rounds and the best
    round of each is kept (the usual "min time" convention); every round is printed to stderr. onnxruntime's
    thread spinning is off by default here: its busy-waiting workers would otherwise slow the torch runs that follow
    in the same process.
    """
    import torch
    from tokenizers import Tokenizer

    from kairos.models.generator import GenerationConfig, KVCacheDecoder, chatml
    from kairos.models.registry import load_model
    from kairos.models.session import SessionOptions
    from kairos.onnx_export import generator_train as gt

    torch.set_num_threads(threads)
    result: dict = {"benchmark": "generator", "threads": threads, "new_tokens": new_tokens, "rounds": rounds,
                    "ort_spinning": spinning, **machine()}
    prompts = [chatml(p) for p in BENCH_PROMPTS]
    runners: dict[str, Callable[[int], tuple[float, float]]] = {}
    pad_id, ids = None, None
    for variant in variants:
        try:
            options = SessionOptions(device="auto", intra_op_threads=threads, allow_spinning=spinning)
            loaded = load_model(model_dir, variant, options=options)
        except Exception as exc:  # noqa: BLE001 - an absent variant is reported, not fatal
            say(f"{variant}: not available ({exc.__class__.__name__})")
            continue
        cfg = loaded.manifest.config
        tokenizer = Tokenizer.from_file(str(loaded.asset(cfg["tokenizer"])))
        ids = [e.ids for e in tokenizer.encode_batch(prompts, add_special_tokens=False)]
        pad_id = cfg["pad_token_id"]
        decoder = KVCacheDecoder(loaded.session, cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"],
                                 eos_token_ids=(), pad_token_id=pad_id)
        key = "ort" if variant == "generator" else "ort_int8"
        result[f"{key}_provider"] = loaded.provider
        decoder.generate(ids[:1], GenerationConfig(max_new_tokens=2))  # warm-up
        runners[key] = _ort_runner(decoder, ids, new_tokens)
    if pad_id is None:
        raise SystemExit(f"no generator model in {model_dir}: run `kairos models build` first")
    model, _ = gt.load_smollm2(gt.ensure_smollm2(cache_dir or Path(model_dir) / "_cache"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result["torch_device"] = device
    runners["torch"] = _torch_runner(model.to(device), ids, new_tokens, pad_id, device)
    for b in batches:
        for r in range(rounds):
            for key, run in runners.items():
                tps, first_ms = run(b)
                say(f"round {r + 1} {key} b{b}: {tps:.2f} tokens/s, first token {first_ms:.1f} ms")
                if tps > result.get(f"{key}_tokens_per_s_b{b}", 0.0):
                    result[f"{key}_tokens_per_s_b{b}"] = round(tps, 2)
                if first_ms < result.get(f"{key}_first_token_ms_b{b}", float("inf")):
                    result[f"{key}_first_token_ms_b{b}"] = round(first_ms, 1)
    for key in ("ort", "ort_int8"):
        if f"{key}_tokens_per_s_b16" in result and "torch_tokens_per_s_b16" in result:
            name = "speedup_b16" if key == "ort" else "speedup_int8_b16"
            result[name] = round(result[f"{key}_tokens_per_s_b16"] / result["torch_tokens_per_s_b16"], 2)
    return result


def _ort_runner(decoder, ids, new_tokens):
    from kairos.models.generator import GenerationConfig

    def run(b: int) -> tuple[float, float]:
        batch = [ids[i % len(ids)] for i in range(b)]
        start = time.perf_counter()
        r = decoder.generate(batch, GenerationConfig(max_new_tokens=new_tokens))
        return b * new_tokens / (time.perf_counter() - start), r.prefill_s * 1000

    return run


def _torch_runner(model, ids, new_tokens, pad_id, device):
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run(b: int) -> tuple[float, float]:
        batch = [ids[i % len(ids)] for i in range(b)]
        width = max(len(x) for x in batch)
        inp = torch.tensor([[pad_id] * (width - len(x)) + x for x in batch], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch], device=device)
        with torch.inference_mode():
            start = time.perf_counter()
            model(input_ids=inp, attention_mask=mask, logits_to_keep=1)  # prefill, as the first generate step
            sync()
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(inp, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=pad_id)
            sync()
            elapsed = time.perf_counter() - start
        return b * new_tokens / elapsed, first * 1000

    return run


def print_json_last(result: dict) -> None:
    print(json.dumps(result, ensure_ascii=False, sort_keys=False), flush=True)


def smollm2_architecture(vocab_size: int = 49152):
    """A randomly initialised model with SmolLM2-135M's exact architecture (speed does not depend on the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).eval()


def bench_torch_device(device: str = "cuda", new_tokens: int = 32, prompt_tokens: int = 90, batches=(1, 16),
                       ranker_batches=(1, 32, 256, 1024), say=print) -> dict:
    """Torch eager on an accelerator: ranker p50/p99 and generator tokens/s (SmolLM2 architecture, random weights).

    Used on lent GPU machines where only torch is installed (no CUDA build of onnxruntime there).
    """
    import torch

    from kairos.onnx_export.ranker_model import DeepFMCrossRanker, example_inputs

    result: dict = {"benchmark": "torch_device", "device": device, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ranker = DeepFMCrossRanker().eval().to(device)
    for b in ranker_batches:
        inputs = {k: v.to(device) for k, v in example_inputs(b, seed=b).items()}

        def call():
            with torch.inference_mode():
                ranker(**inputs)
            sync()

        p50, p99 = _percentiles(call, 200, warmup=10)
        result[f"torch_p50_ms_b{b}"], result[f"torch_p99_ms_b{b}"] = round(p50, 4), round(p99, 4)
    say("ranker: " + json.dumps({k: v for k, v in result.items() if k.startswith("torch_p")}))
    model = smollm2_architecture().to(device)
    g = torch.Generator().manual_seed(0)
    for b in batches:
        ids = torch.randint(10, 49000, (b, prompt_tokens), generator=g).to(device)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            sync()
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            sync()
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            sync()
            elapsed = time.perf_counter() - start
        result[f"torch_tokens_per_s_b{b}"] = round(b * new_tokens / elapsed, 1)
        result[f"torch_first_token_ms_b{b}"] = round(first * 1000, 2)
        say(f"generator b{b}: {result[f'torch_tokens_per_s_b{b}']} tokens/s, first token {result[f'torch_first_token_ms_b{b}']} ms")
    return result
