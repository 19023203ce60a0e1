"""The ``kairos`` command. Sub-commands of other packages register themselves here; a missing optional piece
(e.g. the ``train`` extra for ``kairos models build``) disables only its own commands, with a clear message.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from kairos.agents.settings import SettingsError, load_settings

log = logging.getLogger("kairos")

#: (module, function) pairs that add sub-commands; each gets the sub-parser groups by name.
_PLUGINS = (
    ("kairos.agents.replay", "add_replay_parser"),
    ("kairos.onnx_export.cli", "register"),
    ("kairos.agents.ops", "register"),
    ("kairos.agents.evaluation", "register"),
    ("kairos.agents.bench_copy", "register"),
    ("kairos.agents.bench_broker", "register"),
    ("kairos.agents.bench_hotpath", "register"),
    ("kairos.agents.bench_copybook", "register"),
    ("kairos.agents.bench_checkpoint", "register"),
)


def _print_json_last(result: dict) -> int:
    print(json.dumps(result, sort_keys=False))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from kairos.agents.demo import demo_main

    settings = load_settings()
    demo_main(settings, args.data_dir, args.source, args.events, args.rate or None, args.examples, args.build_models,
              single_process=args.single_process)  # fmt: skip
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    """One Kairos worker process: the Faust app (ingest service, copy agent, web views) until SIGTERM/SIGINT."""
    import faust

    from kairos.agents.app import announce_ready, create_app
    from kairos.agents.runtime import services

    settings = load_settings()
    with services(settings) as svc:
        if svc.embedded_kafka or svc.embedded_redis:
            log.warning("embedded services at %s / %s (they stop with this worker)", svc.bootstrap, svc.redis_url)
        roles = frozenset(args.roles.split(","))
        app = create_app(settings, svc.bootstrap, svc.redis_url, web_port=args.web_port, web_host=args.web_host,
                         roles=roles, beside_hot_path=args.beside_hot_path or None)  # fmt: skip
        if args.ready_file is not None:
            announce_ready(app, roles, args.ready_file)
        worker = faust.Worker(app, loglevel=settings.log_level, override_logging=False)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0


def _cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from kairos.agents.bench_pipeline import bench_pipeline_main

    settings = load_settings(partitions=args.partitions) if args.partitions else load_settings()
    return _print_json_last(
        bench_pipeline_main(settings, args.data_dir, args.source, args.events, args.rate, args.latency_seconds,
                            args.workers, args.latency_repeats)  # fmt: skip
    )


def _cmd_schemas_export(args: argparse.Namespace) -> int:
    from kairos.schemas.jsonschema_export import export_json_schemas

    for path in export_json_schemas(Path(args.out)):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kairos", description="Real-time personalization engine")
    parser.add_argument("--log-level", default=None, help="overrides KAIROS_LOG_LEVEL")
    top = parser.add_subparsers(dest="command", required=True)

    demo = top.add_parser("demo", help="run the whole pipeline on embedded services with a live view")
    demo.add_argument("--data-dir", type=Path, default=None, help="real data sets (default ../shared/data if present)")
    demo.add_argument("--source", default="all", choices=["all", "online_retail", "taobao", "simulated"])
    demo.add_argument("--events", type=int, default=6_000)
    demo.add_argument("--rate", type=float, default=200.0, help="events per second (0: as fast as possible)")
    demo.add_argument("--examples", type=int, default=3)
    demo.add_argument("--build-models", action="store_true", help="build the ONNX models first if none exist (train extra)")
    demo.add_argument(
        "--single-process", action="store_true",
        help="run the copy agent in the demo's process too (default: its own process, `kairos worker --roles copy`)",
    )  # fmt: skip
    demo.set_defaults(func=_cmd_demo)

    worker = top.add_parser("worker", help="run one worker: Faust app with the ingest service and the copy agent")
    worker.add_argument("--web-port", type=int, default=None, help="serve /healthz and /metrics on this port")
    worker.add_argument("--web-host", default="127.0.0.1", help="address the web views bind to")
    worker.add_argument(
        "--roles", default="ingest,copy", choices=["ingest,copy", "ingest", "copy"],
        help="ingest (hot path), copy (generation agent), or both; run them as separate processes in production",
    )  # fmt: skip
    worker.add_argument(
        "--beside-hot-path", action="store_true",
        help="a hot path shares this machine's cores (kairos demo): the generator gets KAIROS_ONNX_THREADS "
        "non-spinning threads instead of a spinning thread per core",
    )  # fmt: skip
    worker.add_argument("--ready-file", type=Path, default=None,
                        help="write a JSON line here once every role is at work (for a parent process)")  # fmt: skip
    worker.set_defaults(func=_cmd_worker)

    groups = {name: top.add_parser(name, help=f"{name} commands").add_subparsers(dest=f"{name}_command", required=True)
              for name in ("bench", "eval", "models", "dlq", "schemas")}  # fmt: skip

    bench = groups["bench"].add_parser("pipeline", help="plain aiokafka loop vs the full pipeline")
    bench.add_argument("--data-dir", type=Path, default=None)
    bench.add_argument("--source", default="all", choices=["all", "online_retail", "taobao", "simulated"])
    bench.add_argument("--events", type=int, default=50_000)
    bench.add_argument("--partitions", type=int, default=None)
    bench.add_argument("--rate", type=float, default=None, help="latency phase rate (default: half the max)")
    bench.add_argument("--latency-seconds", type=float, default=30.0,
                       help="latency phase length at most (the embedded broker's fetch cost grows with the log)")  # fmt: skip
    bench.add_argument("--workers", type=int, default=1,
                       help="hot-path worker processes in the consumer group (one per core: 2 on a 2-core machine)")  # fmt: skip
    bench.add_argument("--latency-repeats", type=int, default=1,
                       help="run the latency phase this many times, each on fresh topics after the same backlog, "
                            "and report the spread")  # fmt: skip
    bench.set_defaults(func=_cmd_bench_pipeline)

    export = groups["schemas"].add_parser("export", help="write JSON Schema files for every record")
    export.add_argument("--out", default="schemas/jsonschema")
    export.set_defaults(func=_cmd_schemas_export)

    for module_name, function in _PLUGINS:
        _load_plugin(module_name, function, groups, top)
    return parser


def _load_plugin(module_name: str, function: str, groups: dict, top) -> None:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        log.debug("commands of %s unavailable: %s", module_name, exc)
        return
    register = getattr(module, function, None)
    if register is None:
        return
    if function == "add_replay_parser":
        register(top)
    elif module_name.endswith("ops"):
        register(groups, top)
    else:
        register(groups)


def main(argv: list[str] | None = None) -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc.code, file=sys.stderr)
        sys.exit(2)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level or settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "kafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sys.exit(args.func(args))
