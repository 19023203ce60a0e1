"""Longer LoRA fine-tune of SmolLM2 on a lent GPU machine, as a standalone script.

The GPU machines have torch, transformers and peft but not this project's runtime dependencies or the data, so the
build side exports the training pairs (already chat-formatted) to JSONL with :func:`write_pairs`, this script trains
on them and writes only the LoRA adapter (~20 MB), and ``kairos models build --generator-adapter FILE`` merges it
into the base weights locally and exports the ONNX generator as usual.

    python onnx_export/gpu_finetune.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --pairs pairs.jsonl --out adapter.pt

Imports only torch / transformers / peft (and gguf for loading), never ``kairos``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_pairs(path: Path, train: list[tuple[str, str]], held: list[tuple[str, str]]) -> Path:
    """One JSON object per line: ``{"prompt": chat-formatted prompt, "target": answer + end marker, "split"}``."""
    with open(path, "w", encoding="utf-8") as f:
        for split, pairs in (("train", train), ("held", held)):
            for prompt, target in pairs:
                f.write(json.dumps({"prompt": prompt, "target": target, "split": split}, ensure_ascii=False) + "\n")
    return Path(path)


def _load(gguf: Path, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    return model.to(device), tokenizer


def _encode(tokenizer, rows, max_len):
    out = []
    for row in rows:
        p = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"][-(max_len // 2):]
        t = tokenizer(row["target"], add_special_tokens=False)["input_ids"]
        out.append(((p + t)[:max_len], ([-100] * len(p) + t)[:max_len]))
    return out


def _batch(rows, pad_id, device):
    import torch

    width = max(len(x) for x, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids.to(device), mask.to(device), labels.to(device)


def _nll(model, ids, mask, labels):
    import torch

    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logits = model.lm_head(hidden[keep])
    return torch.nn.functional.cross_entropy(logits, target[keep], reduction="sum"), int(keep.sum())


def _perplexity(model, encoded, pad_id, device, batch=32):
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch):
            nll, n = _nll(model, *_batch(encoded[i : i + batch], pad_id, device))
            total, count = total + float(nll), count + n
    return math.exp(total / max(count, 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=192)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--time-budget", type=float, default=420.0)
    args = parser.parse_args(argv)

    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model, tokenizer = _load(args.gguf, device)
    rows = [json.loads(line) for line in args.pairs.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = _encode(tokenizer, [r for r in rows if r["split"] == "train"], args.max_len)
    held = _encode(tokenizer, [r for r in rows if r["split"] == "held"], args.max_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 2
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "train_pairs": len(train),
              "ppl_base": _perplexity(model, held, pad_id, device)}
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    rng, start, losses = random.Random(0), time.perf_counter(), []
    for step in range(args.steps):
        nll, n = _nll(peft_model.get_base_model(), *_batch(rng.sample(train, args.batch), pad_id, device))
        loss = nll / n
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"step {step} loss {sum(losses[-100:]) / len(losses[-100:]):.3f} {time.perf_counter() - start:.0f}s",
                  file=sys.stderr, flush=True)
        if time.perf_counter() - start > args.time_budget:
            break
    peft_model.eval()
    report.update(steps=len(losses), seconds=round(time.perf_counter() - start, 1),
                  ppl_finetuned=_perplexity(peft_model.get_base_model(), held, pad_id, device),
                  final_loss=sum(losses[-50:]) / len(losses[-50:]),
                  lora={"r": args.rank, "alpha": 2 * args.rank, "targets": LORA_TARGETS},
                  batch=args.batch, max_len=args.max_len, lr=args.lr)
    state = {k: v.detach().to("cpu", torch.float16) for k, v in get_peft_model_state_dict(peft_model).items()}
    torch.save({"state": state, "report": report}, args.out)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
