"""Pseudonymized user ids and redacted secrets in logs."""

from __future__ import annotations

import io
import logging

import pytest

from kairos.agents.privacy import REDACTED, Pseudonymizer, RedactSecrets, install_log_redaction
from kairos.agents.settings import Settings


def test_pseudonyms_are_keyed_stable_and_not_the_id():
    a, b = Pseudonymizer("key-one-12345"), Pseudonymizer("key-two-12345")
    assert a("alice@example.com") == a("alice@example.com")
    assert a("alice@example.com") != b("alice@example.com"), "a different key gives a different pseudonym"
    assert "alice" not in a("alice@example.com") and len(a("x")) == 18
    assert len({a(f"user-{k}") for k in range(10_000)}) == 10_000
    with pytest.raises(ValueError):
        Pseudonymizer("short")


@pytest.fixture
def captured():
    stream = io.StringIO()
    logger = logging.getLogger("kairos.test.privacy")
    logger.handlers[:] = [logging.StreamHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.handlers.clear()


def test_secrets_never_reach_the_log_output(captured):
    logger, stream = captured
    settings = Settings(
        api_token="tok-0123456789", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="svc", kafka_sasl_password="sasl-pa55word", redis_url="rediss://:redis-pa55@cache:6380/0",
        pseudonymize_key="pseudo-key-secret",
    )  # fmt: skip
    install_log_redaction(settings, logger)
    logger.info("settings: %r", settings.model_dump())
    logger.warning("redis %s unreachable", settings.redis_url)
    logger.info("request with Authorization: Bearer %s", "some-other-token")
    logger.info("config password=%s token: %s", "p1", "t2")
    try:
        raise RuntimeError(f"login failed for {settings.kafka_sasl_password}")
    except RuntimeError:
        logger.exception("kafka error")
    out = stream.getvalue()
    for secret in ("tok-0123456789", "sasl-pa55word", "redis-pa55", "pseudo-key-secret", "some-other-token", "=p1", " t2"):
        assert secret not in out, f"{secret!r} leaked:\n{out}"
    assert out.count(REDACTED) >= 7 and "cache:6380" in out and "login failed for" in out


def test_filter_keeps_records_and_merges_arguments():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "user %s did %d things", ("u_abc", 3), None)
    assert RedactSecrets(["nothing-here"]).filter(record) is True
    assert record.getMessage() == "user u_abc did 3 things"


def test_metric_labels_never_carry_user_ids():
    """Label names of every declared metric are bounded dimensions; none is a user or item id."""
    from kairos.engine import metrics

    labels = {name for m in vars(metrics).values() if hasattr(m, "_labelnames") for name in m._labelnames}
    assert labels and not labels & {"user", "user_id", "item", "item_id", "slot"}
