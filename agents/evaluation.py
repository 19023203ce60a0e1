"""``kairos eval replay | ope | simulate``: offline evaluation commands (see docs/evaluation.md).

Each command prints human-readable progress to stderr and ONE JSON object as the last line of stdout.

    kairos eval replay --data-dir ../shared/data --limit 5000
    kairos eval ope --data-dir ../shared/data --policy bts --segment all
    kairos eval simulate --steps 5000 --seed 0 --plot sim_ctr.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import islice
from pathlib import Path

from kairos.engine.config import EngineConfig
from kairos.engine.datasets import DatasetReport, default_data_dir, iter_online_retail
from kairos.engine.evaluation import (
    PrequentialReplay,
    RecommenderBackend,
    RecommenderLoopArm,
    ReplayArms,
    ReplayResult,
    SelectorBackend,
    SelectorLoopArm,
    ShardedBackend,
    loop_summary,
    simulate_closed_loop,
)
from kairos.engine.recommender import Recommender
from kairos.engine.simulator import ShopperSimulator

try:  # the selection stage (feedback correction + exploration); the plain Recommender stands in without it
    from kairos.engine.selection import Selector
except ImportError:  # pragma: no cover - only while engine/selection.py is missing or broken
    Selector = None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_result(result: dict) -> int:
    print(json.dumps(result))
    return 0


def _data_dir(path: Path | None) -> Path:
    resolved = path or default_data_dir()
    if resolved is None:
        raise SystemExit("no --data-dir given and ../shared/data not found")
    return Path(resolved)


def _engine_config() -> EngineConfig:
    """The engine as deployed: the settings' engine config when the environment is valid, else the defaults."""
    try:
        from kairos.agents.settings import load_settings

        return load_settings().engine_config()
    except Exception:  # noqa: BLE001 - evaluation must run without a deployment environment
        return EngineConfig()


# --------------------------------------------------------------------------------------------------------------------
# replay


def replay_command(args: argparse.Namespace) -> int:
    config = _engine_config()
    use_selector = args.engine == "selector" and Selector is not None
    if args.engine == "selector" and Selector is None:
        _say("engine.selection is not importable: evaluating the plain Recommender")
    if args.partitions < 1:
        raise SystemExit("--partitions must be at least 1")

    def make_backend():
        return (SelectorBackend(Selector(config, exploration=False, seed=args.seed)) if use_selector
                else RecommenderBackend(Recommender(config, seed=args.seed)))

    if args.partitions > 1:
        # As deployed: each input partition's engine learns from the shoppers the Kafka key routes to it.
        from kairos.agents.pipeline import partition_for

        shards = args.partitions
        backend = ShardedBackend([make_backend() for _ in range(shards)], lambda user: partition_for(user, shards),
                                 shared_discovery=args.shared_discovery)
    else:
        backend = make_backend()
    arms = ReplayArms(config, backend)
    replay = PrequentialReplay(arms.rankers(), arms.learners(), k=args.k)
    started = time.perf_counter()
    warm_ids: set[str] = set()
    if args.warmup_dir is not None:
        _say(f"warm-up on {args.warmup_dir} (learning only)")
        for event in iter_online_retail(args.warmup_dir):
            replay.warm_up([event])
            warm_ids.add(event.event_id)
    report = DatasetReport()
    events = (e for e in iter_online_retail(_data_dir(args.data_dir), report) if e.event_id not in warm_ids)
    result = replay.run(islice(events, args.limit), progress=lambda r: _progress(r, started), progress_every=2_000)
    _say(report.summary())
    out = result.to_dict()
    out.update(engine_kind="selector" if use_selector else "recommender", k=args.k, partitions=args.partitions,
               shared_discovery=args.partitions > 1 and args.shared_discovery,
               seconds=round(time.perf_counter() - started, 1))
    return _print_result(out)


def _progress(result: ReplayResult, started: float) -> None:
    ndcg = " ".join(f"{name}={t.summary()[f'ndcg@{t.k}']:.4f}" for name, t in result.metrics.items())
    _say(f"{result.events:,} events, {result.purchases_evaluated:,} purchases scored, "
         f"{time.perf_counter() - started:.0f}s; ndcg {ndcg}")


# --------------------------------------------------------------------------------------------------------------------
# ope


def ope_command(args: argparse.Namespace) -> int:
    from kairos.engine.ope import evaluate_open_bandit

    data_dir = _data_dir(args.data_dir)
    _say(f"off-policy evaluation on open_bandit/{args.policy}/{args.segment} (seed {args.seed})")
    # The Selector explores with epsilon 0.05 when deployed; the click-model stand-in was measured with 0.1.
    epsilon = args.epsilon if args.epsilon is not None else (0.05 if args.engine_policy == "selector" else 0.1)
    result = evaluate_open_bandit(data_dir, policy=args.policy, segment=args.segment, seed=args.seed,
                                  epsilon=epsilon, n_boot=args.n_boot, engine=args.engine_policy)
    return _print_result(result)


# --------------------------------------------------------------------------------------------------------------------
# simulate


def simulate_command(args: argparse.Namespace) -> int:
    config = _engine_config()
    arms = _loop_arms(config, args.seed)
    _say(f"closed loop: {args.steps:,} organic events per arm, seed {args.seed}, arms {list(arms)}")
    started = time.perf_counter()
    traces = simulate_closed_loop(
        arms, lambda: ShopperSimulator(seed=args.seed, n_users=args.users, n_items=args.items), args.steps, config)
    summary = loop_summary(traces, args.window)
    out = {"ctr_with_feedback": summary["with_feedback"]["ctr"], "ctr_without": summary["without"]["ctr"],
           "steps": args.steps, "plot": None, "window": args.window, "arms": summary,
           "engine_kind": "selector" if Selector is not None else "recommender",
           "seconds": round(time.perf_counter() - started, 1)}
    if args.plot is not None:
        out["plot"] = str(_plot(traces, args.window, args.plot, args.seed))
    return _print_result(out)


def _loop_arms(config: EngineConfig, seed: int) -> dict:
    if Selector is None:
        _say("engine.selection is not importable: both arms are the plain Recommender (no feedback, no exploration)")
        return {"with_feedback": lambda: RecommenderLoopArm(Recommender(config, seed=seed)),
                "without": lambda: RecommenderLoopArm(Recommender(config, seed=seed))}
    return {
        "with_feedback": lambda: SelectorLoopArm(Selector(config, feedback=True, exploration=True, seed=seed)),
        "without": lambda: SelectorLoopArm(Selector(config, feedback=False, exploration=False, seed=seed)),
    }


def _plot(traces: dict, window: int, path: Path, seed: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, trace in traces.items():
        rolling = trace.rolling_ctr(window)
        start = min(window, len(rolling)) - 1 if len(rolling) else 0  # a full window first: early points are noise
        steps = range(start + 1, len(rolling) + 1)
        ax.plot(steps, rolling[start:], label=f"{name.replace('_', ' ')} (overall {trace.ctr:.3f})")
    ax.set_xlabel("step (organic simulated event, one slate of 10 each)")
    ax.set_ylabel(f"CTR per shown item, last {window} steps")
    ax.set_title(f"Closed loop with the SIMULATED shopper (seed {seed})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------------------------
# registration


def register(groups: dict) -> None:
    """Add ``replay``, ``ope`` and ``simulate`` to ``kairos eval``."""
    evaluation = groups["eval"]
    p = evaluation.add_parser("replay", help="prequential HR@10 / NDCG@10 on Online Retail: engine vs baselines")
    p.add_argument("--data-dir", type=Path, default=None, help="reads every online_retail/*.parquet under it")
    p.add_argument("--warmup-dir", type=Path, default=None, help="events from here only train (an earlier slice)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N events (quick runs)")
    p.add_argument("--engine", choices=["selector", "recommender"], default="selector")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partitions", type=int, default=1,
                   help="split the engine into P partitions by the shopper's Kafka key, as a deployment with P input "
                        "partitions runs it (default 1: one engine sees every shopper)")
    p.add_argument("--no-shared-discovery", dest="shared_discovery", action="store_false",
                   help="with --partitions: each partition's discovery model learns only its own shoppers' orders "
                        "(KAIROS_SHARED_DISCOVERY=false); by default every partition learns every order, as deployed")
    p.set_defaults(func=replay_command)

    p = evaluation.add_parser("ope", help="off-policy evaluation of the engine policy on Open Bandit logs")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--policy", default="bts", choices=["bts", "random"])
    p.add_argument("--segment", default="all", choices=["all", "men", "women"])
    p.add_argument("--epsilon", type=float, default=None, help="default: 0.05 (selector), 0.1 (click-model)")
    p.add_argument("--engine-policy", choices=["selector", "click-model"], default="selector",
                   help="selector: the live engine's feedback corrector + slate policy; click-model: the earlier stand-in")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=ope_command)

    p = evaluation.add_parser("simulate", help="closed loop with the simulated shopper: feedback on vs off")
    p.add_argument("--steps", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=1_000)
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--window", type=int, default=500, help="rolling CTR window, in steps")
    p.add_argument("--plot", type=Path, default=Path("var/eval/sim_ctr.png"),
                   help="write the CTR-over-time PNG here (default var/eval/sim_ctr.png)")
    p.set_defaults(func=simulate_command)
