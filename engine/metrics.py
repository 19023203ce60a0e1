"""Every Prometheus metric Kairos exports, declared once (prometheus-client). Label values must stay bounded:
topics, partitions, steps, error classes, providers — never user or item ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: 50 us .. 5 s: per-step latencies are mostly sub-millisecond, end-to-end ones a few milliseconds.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

EVENTS_IN = Counter("kairos_events_in_total", "Records consumed from input topics", ["topic"])
EVENTS_APPLIED = Counter("kairos_events_applied_total", "Valid events applied to user state", ["kind"])
EVENTS_DUPLICATE = Counter("kairos_events_duplicate_total", "Events skipped because their id was already applied")
EVENTS_REKEYED = Counter("kairos_events_rekeyed_total", "Valid events forwarded to their user's partition")
EVENTS_OUT = Counter("kairos_events_out_total", "Records produced to output topics", ["topic"])
DEAD_LETTERS = Counter("kairos_dead_letters_total", "Input records sent to the dead-letter topic", ["reason"])
RECOMMENDATIONS = Counter("kairos_recommendations_total", "Recommendations produced")
PEER_ORDERS = Counter(
    "kairos_peer_orders_total", "Other partitions' orders read from the discovery topic, per owned partition",
    ["outcome"],
)  # outcomes: learned, duplicate (published again by a source that restarted), invalid (dead-lettered)
RANKER_FALLBACKS = Counter("kairos_ranker_fallbacks_total", "Rankings that fell back from the configured ranker")

STEP_LATENCY = Histogram(
    "kairos_step_seconds", "Latency of one pipeline step", ["step"], buckets=LATENCY_BUCKETS
)  # steps: decode, state, retrieval, features, rank, rules, emit, commit, checkpoint (building a commit that
# carries the partition's global checkpoint)
BATCH_SIZE = Histogram("kairos_batch_records", "Records per consumed batch", buckets=(1, 10, 50, 100, 500, 1000, 5000))
EVENT_TO_REC = Histogram(
    "kairos_event_to_recommendation_seconds", "From event append time to recommendation produced", buckets=LATENCY_BUCKETS
)
#: Pauses of CPython's cyclic garbage collector, per generation (agents/memory.py keeps full collections short).
GC_PAUSE = Histogram("kairos_gc_pause_seconds", "One garbage collection pause", ["generation"], buckets=LATENCY_BUCKETS)
CONSUME_DELAY = Histogram(
    "kairos_consume_delay_seconds", "Per batch: its oldest record's wait from broker append to the worker", buckets=LATENCY_BUCKETS
)
FETCH_WAIT = Gauge("kairos_fetch_wait_seconds", "How long the hot path's consumer lets the broker hold a fetch now")
FETCH_STALLS = Counter(
    "kairos_fetch_stalls_total",
    "Empty polls for two fetch waits while records waited in the broker (the wait doubles, up to its maximum)",
)
REDIS_WRITE = Histogram("kairos_redis_write_seconds", "One atomic state+serving commit", buckets=LATENCY_BUCKETS)

CONSUMER_LAG = Gauge("kairos_consumer_lag", "Records behind the high watermark", ["topic", "partition"])
PARTITIONS_OWNED = Gauge("kairos_partitions_owned", "Input partitions owned by this worker")
USERS_IN_MEMORY = Gauge("kairos_users_in_memory", "User states held by this worker")
USERS_LOADED = Counter("kairos_users_loaded_total", "User states read back from the store (returning shoppers)")
USERS_EVICTED = Counter("kairos_users_evicted_total", "User states dropped from memory (still in the store)", ["why"])
SERVING_STALE = Gauge("kairos_serving_stale", "1 while serving state in Redis is behind (Redis unavailable)")

# --- serving, models and operations (issue 5) ---

#: Model inference per call; ``provider`` is the onnxruntime execution provider actually used (CPU, CUDA, ...).
MODEL_INFERENCE = Histogram(
    "kairos_model_inference_seconds", "One model inference call", ["model", "provider"], buckets=LATENCY_BUCKETS
)
MODEL_PROVIDER = Gauge("kairos_model_provider", "1 for the execution provider each loaded model runs on", ["model", "provider"])
GENERATION_QUEUE_DEPTH = Gauge("kairos_generation_queue_depth", "Copy-generation requests waiting for the generator")
#: A worker's copy book: ``pending`` = missed keys waiting for a place in its window, ``outstanding`` = asked for and
#: not answered yet (at most ``KAIROS_COPY_IN_FLIGHT``).
COPY_REQUESTS = Gauge("kairos_copy_requests", "Product-copy keys of the worker's copy book by state", ["state"])
#: Copy requests the copy agent did not write again: it had answered the key moments before (several workers asked).
COPY_REPEATS_SKIPPED = Counter("kairos_copy_repeats_skipped_total", "Copy requests for a key the agent had just answered")
#: Lookups in in-process caches (``cache``: api_recent, copy, ...); hit rate = hit / (hit + miss).
CACHE_LOOKUPS = Counter("kairos_cache_lookups_total", "Cache lookups by outcome", ["cache", "result"])

API_REQUESTS = Counter("kairos_api_requests_total", "Storefront API requests", ["route", "status"])
API_LATENCY = Histogram("kairos_api_request_seconds", "Storefront API request latency", ["route"], buckets=LATENCY_BUCKETS)
#: Where a GET recommendations answer came from: personal, trending (cold start), cache (Redis away), none.
API_ANSWERS = Counter("kairos_api_answers_total", "Recommendation answers by source", ["source"])
API_EVENTS_ACCEPTED = Counter("kairos_api_events_accepted_total", "Events accepted over HTTP and produced", ["kind"])
API_EVENTS_REJECTED = Counter("kairos_api_events_rejected_total", "Events refused over HTTP", ["reason"])
DLQ_REPLAYED = Counter("kairos_dlq_replayed_total", "Dead letters re-injected by `kairos dlq replay`", ["outcome"])
