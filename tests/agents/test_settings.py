import pytest

from kairos.agents.settings import SettingsError, load_settings


def test_defaults_are_embedded(monkeypatch):
    monkeypatch.delenv("KAIROS_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("KAIROS_REDIS_URL", raising=False)
    settings = load_settings()
    assert settings.wants_embedded_kafka and settings.wants_embedded_redis
    assert settings.topics.clicks == "kairos.clicks"


def test_configured_services_are_not_embedded(monkeypatch):
    monkeypatch.setenv("KAIROS_KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("KAIROS_REDIS_URL", "rediss://cache:6380/0")
    settings = load_settings()
    assert not settings.wants_embedded_kafka and not settings.wants_embedded_redis


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("KAIROS_KAFKA_BOOTSTRAP_SERVERS", "kafka-without-port"),
        ("KAIROS_REDIS_URL", "http://cache"),
        ("KAIROS_PARTITIONS", "0"),
        ("KAIROS_EMBEDDED", "maybe"),
        ("KAIROS_BATCH_MAX_RECORDS", "lots"),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert var in str(info.value.code)


def test_sasl_needs_credentials(monkeypatch):
    monkeypatch.setenv("KAIROS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match="KAIROS_KAFKA_SASL_USERNAME"):
        load_settings()


def test_topic_prefix_applies_to_every_topic():
    topics = load_settings(topic_prefix="shop7").topics
    assert all(name.startswith("shop7.") for name in vars(topics).values())


def test_a_worker_child_gets_the_hot_path_settings_of_its_parent(monkeypatch):
    """``worker_environment`` (the soak's and the fault tests' worker children, the demo's copy agent): a child
    loading its settings from it ranks as many candidates, batches and fetches as its parent, including the
    embedded broker's fetch floor that the child, seeing a configured address, would not pick itself."""
    import os

    from kairos.agents.ops import worker_environment

    for name in [n for n in os.environ if n.startswith("KAIROS_")]:
        monkeypatch.delenv(name)
    configured = {"kafka_bootstrap_servers": "127.0.0.1:9092", "redis_url": "redis://127.0.0.1:6379/0"}
    unset = worker_environment(load_settings(**configured))
    assert "KAIROS_FETCH_MIN_WAIT_MS" not in unset  # the child then picks its own floor, as the parent would
    parent = load_settings(**configured, max_candidates=500, batch_max_records=200, fetch_max_wait_ms=40, fetch_min_wait_ms=10)
    env = worker_environment(parent)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = load_settings()
    assert (child.max_candidates, child.batch_max_records) == (500, 200)
    assert child.fetch_wait_bounds() == parent.fetch_wait_bounds() == (10, 40)


def test_input_partitions_one_count_or_some_topics_each_a_multiple_of_the_states():
    settings = load_settings(partitions=4)
    assert set(settings.input_partition_counts().values()) == {4}
    assert load_settings(partitions=4, input_partitions="16").input_partitions_of("kairos.impressions") == 16
    some = load_settings(partitions=4, input_partitions="clicks=16, ad_requests=8")
    assert some.input_partition_counts() == {"clicks": 16, "purchases": 4, "impressions": 4, "rekeyed": 4, "ad_requests": 8}
    assert some.input_partitions_of("kairos.clicks") == 16 and some.input_partitions_of("kairos.recommendations") is None
    # the names are the topics the worker consumes
    assert tuple(getattr(some.topics, name) for name in some.input_partition_counts()) == some.topics.inputs()


@pytest.mark.parametrize("value", ["10", "clicks=6", "views=16", "clicks:16", "clicks=0", "0"])
def test_input_partitions_that_do_not_fit_name_the_variable(monkeypatch, value):
    monkeypatch.setenv("KAIROS_PARTITIONS", "4")
    monkeypatch.setenv("KAIROS_INPUT_PARTITIONS", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "KAIROS_INPUT_PARTITIONS" in str(info.value.code)


def test_the_workers_selectors_explore_as_the_settings_say(monkeypatch, tmp_path):
    """KAIROS_EXPLORATION_EPSILON / _SD / _DRAWS reach every partition's Selector (and a worker child's environment)."""
    from kairos.agents.ops import worker_environment
    from kairos.agents.worker import default_selector_factory
    from kairos.engine.config import EngineConfig

    monkeypatch.setenv("KAIROS_EXPLORATION_EPSILON", "0.2")
    monkeypatch.setenv("KAIROS_EXPLORATION_SD", "0.4")
    monkeypatch.setenv("KAIROS_EXPLORATION_DRAWS", "64")
    settings = load_settings(model_dir=tmp_path / "no-models", data_dir=tmp_path)
    selector = default_selector_factory(settings)(EngineConfig())
    assert (selector.policy.epsilon, selector.exploration_sd, selector.policy.draws) == (0.2, 0.4, 64)
    env = worker_environment(settings)
    assert (env["KAIROS_EXPLORATION_EPSILON"], env["KAIROS_EXPLORATION_SD"], env["KAIROS_EXPLORATION_DRAWS"]) == (
        "0.2", "0.4", "64")
    for name in ("KAIROS_EXPLORATION_EPSILON", "KAIROS_EXPLORATION_SD", "KAIROS_EXPLORATION_DRAWS"):
        monkeypatch.delenv(name)
    defaults = load_settings(model_dir=tmp_path / "no-models", data_dir=tmp_path)
    assert (defaults.exploration_epsilon, defaults.exploration_sd, defaults.exploration_draws) == (0.05, 0.15, 128)


@pytest.mark.parametrize("name, value", [("KAIROS_EXPLORATION_EPSILON", "1.5"), ("KAIROS_EXPLORATION_SD", "-0.1"),
                                         ("KAIROS_EXPLORATION_DRAWS", "0")])
def test_exploration_settings_out_of_range_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert name in str(info.value.code)


def test_copy_settings_reach_worker_children(monkeypatch, tmp_path):
    """KAIROS_COPY_MIN_LOGPROB (and the copy book's window) reach a worker child's environment: a copy agent
    started by ``kairos demo`` must judge copy as its parent was configured to."""
    from kairos.agents.ops import worker_environment

    monkeypatch.setenv("KAIROS_COPY_MIN_LOGPROB", "-3")
    monkeypatch.setenv("KAIROS_COPY_IN_FLIGHT", "8")
    settings = load_settings(model_dir=tmp_path / "no-models", data_dir=tmp_path)
    env = worker_environment(settings)
    assert (env["KAIROS_COPY_MIN_LOGPROB"], env["KAIROS_COPY_IN_FLIGHT"]) == ("-3.0", "8")
    assert env["KAIROS_COPY_ANSWER_TIMEOUT_S"] == "120.0"
    monkeypatch.setenv("KAIROS_COPY_MIN_LOGPROB", "0.5")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "KAIROS_COPY_MIN_LOGPROB" in str(info.value.code)
