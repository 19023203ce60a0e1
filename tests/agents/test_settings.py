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
