"""``kairos eval models``: quality of what ``kairos models build`` published, measured on the served ONNX models.

- ranker: AUC / logloss of the ONNX ``score`` on the held-out time slice saved by the build (rows built with the
  engine's feature code), vs a popularity baseline (the item's decayed popularity feature) and a logistic
  regression on the dense features trained on the training slice; the click head's AUC on held-out bandit logs;
- generator: perplexity of held-out Myntra descriptions under the base model (torch, from the GGUF) and under
  the fine-tuned ONNX model (teacher-forced through the same KV-cache graph that serves);
- safety: block rate on a fixed list of texts, with precision/recall against their expected verdicts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: (text, should be blocked)
SAFETY_CASES: list[tuple[str, bool]] = [
    ("全网最低价，错过再等一年", True),
    ("销量第一的羽绒服", True),
    ("国家级非遗工艺", True),
    ("顶级羊绒，奢华享受", True),
    ("这款内衣能治疗妇科炎症", True),
    ("穿着它就能减肥瘦身", True),
    ("The best in the world for running", True),
    ("America's No. 1 sneaker", True),
    ("This cream cures acne in 3 days", True),
    ("Clinically proven to reduce back pain", True),
    ("Damn good jeans", True),
    ("这他妈的太好看了", True),
    ("简约白色衬衫，通勤休闲两相宜", False),
    ("最近很火的复古小白鞋", False),
    ("宽松版型，舒适透气，百搭时尚", False),
    ("100% cotton, machine washable", False),
    ("A relaxed linen shirt for warm evenings", False),
    ("Slim fit jeans in a dark blue wash", False),
    ("Soft knit cardigan with pearl buttons", False),
    ("Lightweight trainers with a cushioned sole", False),
]


def safety_metrics() -> dict[str, float]:
    from kairos.engine.safety import SafetyFilter

    f = SafetyFilter()
    verdicts = [(not f.check(text).allowed, expected) for text, expected in SAFETY_CASES]
    blocked = sum(v for v, _ in verdicts)
    true_pos = sum(v and e for v, e in verdicts)
    return {
        "safety_block_rate": blocked / len(verdicts),
        "safety_precision": true_pos / max(blocked, 1),
        "safety_recall": true_pos / max(sum(e for _, e in verdicts), 1),
        "safety_cases": float(len(verdicts)),
    }


def ranker_metrics(model_dir: Path) -> dict[str, float]:
    from kairos.models.ranker import OnnxRanker
    from kairos.onnx_export.ranker_train import auc, logistic_regression, logloss
    from kairos.schemas.features import RANKER_DENSE_FEATURES

    ranker = OnnxRanker.from_dir(model_dir)
    folder = Path(model_dir) / "ranker" / ranker.version
    held = dict(np.load(folder / "heldout.npz", allow_pickle=False))
    train = dict(np.load(folder / "train_dense.npz", allow_pickle=False))
    out = ranker.predict({k: held[k] for k in ("dense", "category_id", "item_id", "position")})
    s, c = held["score_mask"] > 0, held["click_mask"] > 0
    pop = held["dense"][:, RANKER_DENSE_FEATURES.index("item_popularity_log")]
    lr = logistic_regression(train["dense"], train["label"])(held["dense"][s])
    return {
        "ranker_version": ranker.version,
        "ranker_auc": auc(held["label"][s], out["score"][s]),
        "ranker_logloss": logloss(held["label"][s], out["score"][s]),
        "popularity_auc": auc(held["label"][s], pop[s]),
        "logreg_auc": auc(held["label"][s], lr),
        "logreg_logloss": logloss(held["label"][s], lr),
        "click_auc": auc(held["label"][c], out["click_logit"][c]) if c.any() else float("nan"),
        "ranker_heldout_rows": int(s.sum()),
    }


def onnx_perplexity(decoder, tokenizer, examples, max_len: int = 160, batch: int = 8) -> float:
    """Teacher-forced perplexity of the answers through the KV-cache graph (the model exactly as served)."""
    from kairos.models.generator import chatml
    from kairos.onnx_export.generator_train import END

    total_nll, total = 0.0, 0
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        prompts = [tokenizer.encode(chatml(ex.prompt), add_special_tokens=False).ids for ex in chunk]
        targets = [tokenizer.encode(ex.target + END, add_special_tokens=False).ids for ex in chunk]
        targets = [t[: max(1, max_len - len(p))] for p, t in zip(prompts, targets)]
        nll, count = _teacher_forced(decoder, prompts, targets)
        total_nll += nll
        total += count
    return math.exp(total_nll / max(total, 1))


def _teacher_forced(decoder, prompts, targets) -> tuple[float, int]:
    ids, mask = decoder._left_pad(prompts)
    positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
    past = [np.zeros((len(prompts), decoder.num_kv_heads, 0, decoder.head_dim), np.float32) for _ in decoder.past_names]
    nll, count = 0.0, 0
    step_ids, step_pos = ids, positions
    for t in range(max(len(x) for x in targets)):
        logits, past = decoder._step(step_ids, mask, step_pos, past)
        logp = logits - logits.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        nxt = np.zeros((len(prompts), 1), np.int64)
        for row, target in enumerate(targets):
            if t < len(target):
                nll -= float(logp[row, target[t]])
                count += 1
                nxt[row, 0] = target[t]
        step_ids, step_pos = nxt, step_pos[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((len(prompts), 1), np.int64)], axis=1)
    return nll, count


def generator_metrics(model_dir: Path, data_dir: Path, n_examples: int = 24, cache_dir: Path | None = None,
                      variants=("generator", "generator_int8")) -> dict[str, float]:
    import torch
    from tokenizers import Tokenizer

    from kairos.models.generator import KVCacheDecoder
    from kairos.models.registry import ModelNotFound, load_model
    from kairos.onnx_export import generator_train as gt

    _, held_frame = gt.myntra_split(data_dir)
    held = gt.myntra_examples(held_frame, n_examples, seed=1)
    metrics: dict[str, float] = {"ppl_examples": float(len(held))}
    for variant in variants:
        try:
            loaded = load_model(model_dir, variant)
        except ModelNotFound:
            continue
        cfg = loaded.manifest.config
        tokenizer = Tokenizer.from_file(str(loaded.asset(cfg["tokenizer"])))
        decoder = KVCacheDecoder(loaded.session, cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"])
        key = "ppl_finetuned" if variant == "generator" else "ppl_finetuned_int8"
        metrics[key] = onnx_perplexity(decoder, tokenizer, held)
        if variant == "generator":
            metrics["generator_version"] = loaded.manifest.version
    torch.set_num_threads(2)
    model, tokenizer = gt.load_smollm2(gt.ensure_smollm2(cache_dir or Path(model_dir) / "_cache"))
    metrics["ppl_base"] = gt.perplexity(model, tokenizer, held)
    return metrics


def sample_prompts() -> list[tuple[str, str]]:
    """Five fixed prompts (kind, prompt) built with the serving templates: English and Chinese."""
    from kairos.engine.prompts import ProductFacts, ad_copy_prompt, product_copy_prompt, summary_prompt

    return [
        ("product_en", product_copy_prompt(ProductFacts("Roadster Men Blue Slim Fit Jeans", brand="Roadster",
                                                        colour="Blue", price=1299), ["denim", "casual", "blue"])),
        ("product_en", product_copy_prompt(ProductFacts("Mango Women White Linen Shirt", brand="Mango", colour="White",
                                                        price=2490), ["summer", "linen", "women"])),
        ("ad_zh", ad_copy_prompt(ProductFacts("", attributes="类型#上衣*颜色#白色*风格#休闲*图案#条纹"), ["休闲", "白色"])),
        ("ad_zh", ad_copy_prompt(ProductFacts("", attributes="类型#裙*版型#显瘦*颜色#黑色*裙长#连衣裙"), ["显瘦", "黑色"])),
        ("summary_en", summary_prompt("I love this sweater. The knit is soft and not itchy at all, the sleeves are a "
                                      "little long but the colour is exactly as pictured and it washes well.")),
    ]


def sample_generations(model_dir: Path, variant: str = "generator", max_new_tokens: int = 60) -> list[dict]:
    """Greedy generations (with a mild repetition penalty) for :func:`sample_prompts`, each checked by the filter."""
    from kairos.engine.safety import SafetyFilter
    from kairos.models.generator import GenerationConfig, OnnxGenerator

    generator = OnnxGenerator.from_dir(model_dir, variant)
    config = GenerationConfig(repetition_penalty=1.2, time_budget_s=60.0)
    prompts = sample_prompts()
    texts = generator.generate([p for _, p in prompts], max_new_tokens=max_new_tokens, config=config)
    safety = SafetyFilter()
    return [{"kind": k, "prompt": p, "text": t, "blocked": list(safety.check(t).reasons)}
            for (k, p), t in zip(prompts, texts)]
