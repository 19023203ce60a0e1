"""Generated headline variants of a creative are bandit arms with their own CTR, end to end (issue 4, "Copy").

A real broker and Redis, the Faust app in-process, and a tiny generator published into the model directory and
served by the real ``OnnxGenerator`` (tokenizer, chat format, KV-cache decoding in onnxruntime):

    clicks (history) + ad requests -> ingest: auction over Thompson-picked variants -> ScoredCreative (ad-scores)
      -> the winner's creative -> copy request (kind "ad") -> write_copy: generator + safety filter -> copies topic
      -> copy feed -> CopyBook.ad_variants -> AdSelector: a new arm -> later ScoredCreatives carry its variant id
      -> a click whose rec_id is the request id -> that arm's clicks and posterior move, no other arm's

The tiny model is random, but which path its text takes is fixed by construction: its vocabulary holds no word the
safety filter bans, and the output rows of the special tokens (EOS included) are zero while every other row is
random, so greedy decoding never ends a text empty. Its text is therefore always published as ``generated``. The
other path (the filter blocks, the one regeneration is blocked too, the template -- for an ad, the original
headline -- is published and never becomes an arm) is shown by a second tiny model that can only say a banned word.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest

torch = pytest.importorskip("torch", reason="torch is in the train extra")
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from factories import T0, click  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

from kairos.agents.copy_feed import CopyFeed  # noqa: E402
from kairos.agents.runtime import Services, running_app, wait_for  # noqa: E402
from kairos.agents.settings import Settings  # noqa: E402
from kairos.agents.app import COPY_REPETITION_PENALTY, load_generator  # noqa: E402
from kairos.agents.bench_copy import bench_copy  # noqa: E402
from kairos.engine.ads import variant_request  # noqa: E402
from kairos.engine.copywriting import CopyBook, CopyRequest, CopyWriter  # noqa: E402
from kairos.engine.creatives import builtin_inventory  # noqa: E402
from kairos.engine.safety import SafetyFilter  # noqa: E402
from kairos.models.generator import OnnxGenerator  # noqa: E402
from kairos.models.registry import publish_model  # noqa: E402
from kairos.onnx_export.generator_export import export_causal_lm, generator_config, tiny_llama  # noqa: E402
from kairos.schemas.codec import encode  # noqa: E402

pytestmark = pytest.mark.integration

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
#: The chat format's and the English ad prompt's words, so prompts are not all [UNK] and differ by headline.
PROMPT_WORDS = ["system", "user", "assistant", "You", "are", "a", "concise", "e", "-", "commerce", "copywriter", ".",
                "Write", "one", "sentence", "ad", "for", "this", "shopper", "Product", ":", "you", "will", "love",
                "New", "in", "Last", "chance", "on", "coats", "shoes", "shirts", "sets", "denim", "sneakers"]
SAFE_WORDS = ["fresh", "bright", "warm", "easy", "picks", "look", "season", "light", "soft", "bold", "edit", "find"]
VOCAB_SIZE = 128


def word_tokenizer(vocab: list[str]) -> Tokenizer:
    """Word-level tokenizer over ``vocab`` (token id = list index); decoding joins words with spaces."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIAL)
    return tok


def safe_vocab() -> list[str]:
    words = SPECIAL + PROMPT_WORDS + SAFE_WORDS
    return words + [f"w{i}" for i in range(VOCAB_SIZE - len(words))]


def publish_tiny_generator(model_dir: Path, work: Path, vocab: list[str], version: str, *, banned_only: bool,
                           favour: str | None = None) -> None:  # fmt: skip
    """Export a random tiny Llama with the real exporter and publish it as ``generator`` ``version``.

    ``banned_only=False``: untied random output rows, zero rows for the special tokens (never emitted, so the text
    is never empty). ``banned_only=True``: the output layer only knows ``vocab[0]`` (zero weights, a bias of +30
    for it and -30 for every other token): greedy and sampled decoding alike repeat it forever. ``favour``: a word
    given a bias of +100 on top of the random rows, so every text is that word repeated (an ad variant that
    shares a word with the headline it rewrites, ``on_headline``).
    """
    model = tiny_llama(seed=3, vocab_size=len(vocab), layers=1 if banned_only else 2)
    with torch.no_grad():
        if banned_only:
            model.lm_head = torch.nn.Linear(model.config.hidden_size, len(vocab), bias=True)
            model.lm_head.weight.zero_()
            model.lm_head.bias.fill_(-30.0)
            model.lm_head.bias[0] = 30.0
            model.config.tie_word_embeddings = False
        else:
            weight = torch.randn_like(model.model.embed_tokens.weight)
            model.lm_head = torch.nn.Linear(model.config.hidden_size, len(vocab), bias=favour is not None)
            model.lm_head.weight = torch.nn.Parameter(weight)
            if favour is not None:
                model.lm_head.bias.zero_()
                model.lm_head.bias[vocab.index(favour)] = 100.0
            model.config.tie_word_embeddings = False
            for token in SPECIAL:
                model.lm_head.weight[vocab.index(token)] = 0.0
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = export_causal_lm(model, work / "lm.onnx")
    tokenizer_path = work / "tokenizer.json"
    word_tokenizer(vocab).save(str(tokenizer_path))
    eos = vocab.index("<|im_end|>")
    config = {**generator_config(model.config), "tokenizer": "tokenizer.json", "eos_token_ids": [eos],
              "pad_token_id": eos}  # fmt: skip
    publish_model(model_dir, "generator", version, "generator", onnx_path, assets=[tokenizer_path], config=config)


class TopicReader:
    """Reads whole topics from the beginning (no group) and keeps every decoded value, per topic, in order."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.bootstrap, self.topics = bootstrap, topics
        self.values: dict[str, list[dict]] = {t: [] for t in topics}

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        await self.consumer.start()
        assert await wait_for(lambda: all(self.consumer.partitions_for_topic(t) for t in self.topics), 20)
        parts = [TopicPartition(t, p) for t in self.topics for p in sorted(self.consumer.partitions_for_topic(t))]
        self.consumer.assign(parts)
        await self.consumer.seek_to_beginning()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for tp, records in (await self.consumer.getmany(timeout_ms=200)).items():
                self.values[tp.topic].extend(orjson.loads(r.value) for r in records)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()


def _arms(worker, creative_id: str) -> dict[tuple[int, str], tuple[int, int, float]]:
    """(partition, variant) -> (clicks, impressions, posterior mean) of every arm of the creative, every partition."""
    out = {}
    for partition, state in worker.partitions.items():
        ads = state.selector.ads
        sampler = ads.samplers.get(creative_id)
        if sampler is None:
            continue
        for variant in ads.variant_ids(ads.inventory.creatives[creative_id]):
            s = sampler.stats(variant)
            out[(partition, variant)] = (s.clicks, s.impressions, s.posterior_mean)
    return out


def test_generated_headline_is_served_as_an_arm_and_learns_from_its_own_click(kafka_broker, redis_server, tmp_path):
    version = "20990101-000007"
    vocab = safe_vocab()
    assert all(SafetyFilter().check(w).allowed for w in vocab)  # nothing this model can say is banned
    # Every creative's best headline, the one rewritten, ends "... you will love": a variant must share a content
    # word with it (``on_headline``), so this random model always says "love".
    publish_tiny_generator(tmp_path / "models", tmp_path / "export", vocab, version, banned_only=False, favour="love")
    (tmp_path / "no-data").mkdir()  # no Upworthy file: the built-in inventory (6 creatives, 3 campaigns)
    prefix = f"adcopy{uuid.uuid4().hex[:8]}"
    settings = Settings(
        topic_prefix=prefix, consumer_group=f"{prefix}-g", partitions=2, session_timeout_ms=6000,
        model_dir=tmp_path / "models", data_dir=tmp_path / "no-data",
    )  # fmt: skip
    topics = settings.topics
    svc = Services(kafka_broker, redis_server, False, False)
    users = [f"shopper{n}" for n in range(8)]

    async def scenario():
        async with running_app(settings, svc) as app:
            worker = app.ingest_worker
            producer = AIOKafkaProducer(bootstrap_servers=kafka_broker)
            await producer.start()
            reader = TopicReader(kafka_broker, [topics.ad_scores, topics.copies, topics.copy_requests])
            await reader.start()
            sent = 0

            async def send(topic: str, user: str, value: bytes) -> None:
                nonlocal sent
                await producer.send_and_wait(topic, value, key=user.encode())
                sent += 1

            for n in range(48):  # click history: every shopper gets an interest segment
                event = click(user=users[n % 8], item=f"i{n % 13}", category=f"c{n % 3}", ts=T0 + n)
                await send(topics.clicks, event.user_id, encode(event))

            async def ad_round(r: int) -> None:
                for user in users:
                    request = {"request_id": f"r{r}-{user}", "user_id": user, "slot": "home_banner", "ts": T0 + 100 + r}
                    await send(topics.ad_requests, user, orjson.dumps(request))
                assert await wait_for(lambda: worker.stats["events"] >= sent, 30), "ad requests not consumed"

            def generated_decisions() -> list[dict]:
                return [d for d in reader.values[topics.ad_scores] if ":gen-" in d["variant_id"]]

            await ad_round(0)  # every winner's creative is sent to the copy agent once
            assert await wait_for(lambda: app.copybook.ad_variants, 30), "no generated variant reached the copy book"
            for r in range(1, 16):
                await ad_round(r)
                if await wait_for(lambda: generated_decisions(), 2):
                    break
            served = generated_decisions()
            assert served, "no ScoredCreative carried a generated variant"
            target = served[-1]
            before = _arms(worker, target["creative_id"])
            owner = next(p for p, s in worker.partitions.items() if target["request_id"] in s.selector.ads.served)
            ad_click = click(user=target["user_id"], item=target["creative_id"], action="click",
                             rec_id=target["request_id"], ts=T0 + 200)  # fmt: skip
            await send(topics.clicks, ad_click.user_id, encode(ad_click))
            assert await wait_for(lambda: worker.stats["events"] >= sent, 30), "the click was not consumed"
            after = _arms(worker, target["creative_id"])

            def every_ad_request_answered() -> bool:
                asked = {r["item_id"] for r in reader.values[topics.copy_requests] if r["kind"] == "ad"}
                return asked <= {c["item_id"] for c in reader.values[topics.copies] if c["kind"] == "ad"}

            assert await wait_for(every_ad_request_answered, 20), "an ad copy request got no copy"
            await reader.stop()
            await producer.stop()
            return app.copy_writer.version, reader.values, served, target, owner, before, after

    writer_version, topic_values, served, target, owner, before, after = asyncio.run(scenario())

    # (1) the copy agent wrote a variant of each requested creative with the published generator, on the first try
    assert writer_version == f"generator@{version}"
    requests = [r for r in topic_values[topics.copy_requests] if r["kind"] == "ad"]
    copies = {c["item_id"]: c for c in topic_values[topics.copies] if c["kind"] == "ad"}
    assert requests and {r["item_id"] for r in requests} == set(copies)
    inventory = builtin_inventory()
    reference = CopyWriter(load_generator(settings))  # the same model and decoding, loaded independently
    for request in requests:
        creative = inventory.creatives[request["item_id"]]
        assert CopyRequest.from_json(request) == variant_request(creative)  # its best headline, to rewrite
        copy = copies[request["item_id"]]
        expected = reference.write([CopyRequest.from_json(request)])[0]
        assert copy["writer"] == writer_version and copy["source"] == expected.source == "generated"
        assert copy["text"] == expected.text and copy["text"] != request["name"]
        assert SafetyFilter().check(copy["text"]).allowed
        assert copy["variant_id"] == f"{request['item_id']}:gen-generator@{version}"

    # (2) later decisions served the generated variant: its id is on the ad-scores topic
    decided_creatives = {d["creative_id"] for d in topic_values[topics.ad_scores]}
    assert set(copies) <= decided_creatives  # only creatives that won were sent for copy
    assert target["variant_id"] == copies[target["creative_id"]]["variant_id"]
    assert all(d["variant_id"] == copies[d["creative_id"]]["variant_id"] for d in served)
    assert all(d["headline"] == copies[d["creative_id"]]["text"] for d in served)  # the exchange gets the text too
    assert 0 < target["propensity"] < 1  # logged as one arm among the creative's others

    # (3) the click moved that arm's clicks and posterior in the partition that served it, and nothing else
    arm = (owner, target["variant_id"])
    clicks, impressions, mean = before[arm]
    assert after[arm][:2] == (clicks + 1, impressions + 1) and after[arm][2] > mean
    assert {k: v for k, v in after.items() if k != arm} == {k: v for k, v in before.items() if k != arm}


@pytest.fixture(scope="module")
def banned_model_dir(tmp_path_factory) -> Path:
    """A generator that can only say "cures" (a medical claim the safety filter blocks)."""
    tmp = tmp_path_factory.mktemp("banned")
    vocab = ["cures"] + SPECIAL + PROMPT_WORDS + SAFE_WORDS
    publish_tiny_generator(tmp / "models", tmp / "export", vocab, "1", banned_only=True)
    return tmp / "models"


def test_blocked_generation_falls_back_to_the_original_headline_and_adds_no_arm(banned_model_dir):
    writer = CopyWriter(load_generator(Settings(model_dir=banned_model_dir)))  # what the copy agent runs
    assert writer.generator.defaults.repetition_penalty == COPY_REPETITION_PENALTY
    plain = OnnxGenerator.from_dir(banned_model_dir)  # neither the penalty nor sampling changes what it says
    assert plain.generate(["Write a one-sentence ad."], max_new_tokens=3) == ["cures cures cures"]
    assert plain.generate(["Write a one-sentence ad."], max_new_tokens=3, sample=True) == ["cures cures cures"]
    creative = builtin_inventory().creatives["synthetic-0"]
    request = variant_request(creative)
    [text] = writer.write([request])
    assert (text.text, text.source) == (request.name, "template")
    assert set(text.reasons) == {"medical:cures"}
    stats = writer.stats
    assert (stats.checked, stats.blocked, stats.regenerated, stats.fallbacks) == (2, 2, 1, 1)
    # the record write_copy publishes for it is not a new variant in any worker's copy book
    copybook = CopyBook()
    feed = CopyFeed(Settings(), "unused:0", copybook)
    record = {"item_id": creative.creative_id, "segment": "ad", "text": text.text, "source": text.source, "kind": "ad",
              "writer": writer.version, "variant_id": f"{creative.creative_id}:gen-{writer.version}"}  # fmt: skip
    feed._apply(orjson.dumps(record))
    assert copybook.ad_variants == {} and feed.received == 1


def test_bench_copy_counts_what_the_writer_did(banned_model_dir, tmp_path):
    (tmp_path / "no-data").mkdir()
    result = bench_copy(Settings(model_dir=banned_model_dir, data_dir=tmp_path / "no-data"), creatives=5, batch=2)
    assert result["writer"] == "generator@1" and result["creatives"] == 5 and result["synthetic_inventory"]
    outcomes = ("variants", "template_fallbacks", "empty_fallbacks", "headline_repeated")
    assert [result[k] for k in outcomes] == [0, 5, 0, 0]
    checks = ("safety_checked", "safety_rejected", "rejected_by_reason")
    assert [result[k] for k in checks] == [10, 10, {"medical": 10}]
    assert result["retries_identical_to_first_try"] == 5  # greedy decoding: the retry says the same thing
    assert [e["text"] for e in result["examples"]] == [e["headline"] for e in result["examples"]]


def test_bench_copy_writes_product_copy_for_the_products_the_hot_path_would_ask_for(banned_model_dir, tmp_path):
    (tmp_path / "no-data").mkdir()  # no Online Retail here: the simulator's products
    result = bench_copy(Settings(model_dir=banned_model_dir, data_dir=tmp_path / "no-data"), creatives=4, batch=2,
                        kind="product")  # fmt: skip
    assert result["kind"] == "product" and result["creatives"] == 4 and result["synthetic_inventory"]
    # this generator only says a banned word: every product gets its template, after one retry each
    assert [result[k] for k in ("variants", "template_fallbacks", "safety_rejected")] == [0, 4, 8]
    assert all("Picked for your interest in" in e["text"] for e in result["examples"])
