"""Sub-commands of the models side, registered into the ``kairos`` command by ``kairos.agents.cli``:

    kairos models build [--data-dir DIR] [--model-dir DIR] [--profile small|full] [--only ranker,embedder,generator]
                        [--generator-adapter FILE]
    kairos bench ranker [--threads N] [--device cpu|cuda]
    kairos bench generator [--model-dir DIR] [--threads N] [--new-tokens N] [--rounds N] [--ort-spinning]
    kairos eval models --data-dir DIR [--model-dir DIR]

This module imports nothing heavy at import time (torch is needed only when a command runs), so the CLI works on a
runtime install without the ``train`` extra and reports clearly when a command needs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def default_data_dir() -> Path:
    """``../shared/data`` relative to the working directory; a clear error if it is not there."""
    candidate = Path.cwd() / ".." / "shared" / "data"
    if candidate.is_dir():
        return candidate.resolve()
    raise SystemExit("no data directory: pass --data-dir DIR (default ../shared/data does not exist here)")


def default_model_dir() -> Path:
    return Path(os.environ.get("KAIROS_MODEL_DIR", "var/models"))


def _needs_train_extra() -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"this command needs the train extra (pip install 'kairos[train]'): {exc}") from exc


def _print_last(result: dict) -> int:
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


def cmd_models_build(args: argparse.Namespace) -> int:
    _needs_train_extra()
    from kairos.onnx_export.build import build_models

    logging.basicConfig(level=logging.WARNING)
    steps = tuple(s.strip() for s in args.only.split(",")) if args.only else ("ranker", "embedder", "generator")
    data_dir = args.data_dir or default_data_dir()
    report = build_models(data_dir, args.model_dir or default_model_dir(), args.profile, steps,
                          generator_adapter=args.generator_adapter)
    summary = {"version": report["version"], "profile": args.profile}
    for step, info in report["steps"].items():
        summary[f"{step}_seconds"] = info["seconds"]
        summary.update({k: v for k, v in info["metrics"].items() if isinstance(v, (int, float))})
    return _print_last(summary)


def cmd_bench_ranker(args: argparse.Namespace) -> int:
    _needs_train_extra()
    from kairos.onnx_export.bench import bench_ranker

    return _print_last(bench_ranker(threads=args.threads, device=args.device, say=_stderr))


def cmd_bench_generator(args: argparse.Namespace) -> int:
    _needs_train_extra()
    from kairos.onnx_export.bench import bench_generator

    result = bench_generator(args.model_dir or default_model_dir(), new_tokens=args.new_tokens, threads=args.threads,
                             say=_stderr, rounds=args.rounds, spinning=args.ort_spinning)
    return _print_last(result)


def cmd_eval_models(args: argparse.Namespace) -> int:
    _needs_train_extra()
    from kairos.onnx_export.evaluate import generator_metrics, ranker_metrics, safety_metrics

    model_dir = args.model_dir or default_model_dir()
    data_dir = args.data_dir or default_data_dir()
    result: dict = {}
    result.update(ranker_metrics(model_dir))
    _stderr("ranker: " + ", ".join(f"{k}={v}" for k, v in result.items()))
    result.update(safety_metrics())
    if not args.skip_generator:
        from kairos.onnx_export.evaluate import sample_generations

        samples = sample_generations(model_dir)
        for s in samples:
            _stderr(f"--- {s['kind']}: {s['prompt']!r}\n>>> {s['text']}" + (f"  [blocked: {s['blocked']}]" if s["blocked"] else ""))
        result["generated_block_rate"] = sum(bool(s["blocked"]) for s in samples) / len(samples)
        result.update(generator_metrics(model_dir, data_dir, n_examples=args.ppl_examples))
    return _print_last(result)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    """Add ``models build``, ``bench ranker``, ``bench generator`` and ``eval models`` to the lead's groups."""
    build = groups["models"].add_parser("build", help="train + export ranker, embedder and generator to ONNX")
    build.add_argument("--data-dir", type=Path, default=None, help="real data sets (default ../shared/data)")
    build.add_argument("--model-dir", type=Path, default=None, help="default $KAIROS_MODEL_DIR or ./var/models")
    build.add_argument("--profile", choices=["small", "full"], default="small",
                       help="small: < 15 min on 2 CPU cores; full: longer training")
    build.add_argument("--only", default="", help="comma-separated subset of ranker,embedder,generator")
    build.add_argument("--generator-adapter", type=Path, default=None,
                       help="merge this LoRA adapter (from onnx_export/gpu_finetune.py) instead of fine-tuning here")
    build.set_defaults(func=cmd_models_build)

    ranker = groups["bench"].add_parser("ranker", help="ranker p50/p99: onnxruntime fp32/int8 vs torch eager")
    ranker.add_argument("--threads", type=int, default=2)
    ranker.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    ranker.set_defaults(func=cmd_bench_ranker)

    gen = groups["bench"].add_parser("generator", help="generator tokens/s: onnxruntime vs torch eager")
    gen.add_argument("--model-dir", type=Path, default=None)
    gen.add_argument("--threads", type=int, default=2)
    gen.add_argument("--new-tokens", type=int, default=64, help="per row; 64 = the serving default max_new_tokens")
    gen.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each backend is kept")
    gen.add_argument("--ort-spinning", action="store_true", help="let onnxruntime threads busy-wait (off: fairer)")
    gen.set_defaults(func=cmd_bench_generator)

    ev = groups["eval"].add_parser("models", help="ranker AUC vs baselines, generator perplexity, safety")
    ev.add_argument("--data-dir", type=Path, default=None)
    ev.add_argument("--model-dir", type=Path, default=None)
    ev.add_argument("--ppl-examples", type=int, default=24)
    ev.add_argument("--skip-generator", action="store_true")
    ev.set_defaults(func=cmd_eval_models)


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Alternative entry: create the ``models``/``bench``/``eval`` groups under ``subparsers`` and register."""
    groups = {name: subparsers.add_parser(name).add_subparsers(dest=f"{name}_command", required=True)
              for name in ("models", "bench", "eval")}
    register(groups)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m kairos.onnx_export.cli models build ...``) for use without agents/cli.py."""
    parser = argparse.ArgumentParser(prog="kairos-models")
    add_subcommands(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
