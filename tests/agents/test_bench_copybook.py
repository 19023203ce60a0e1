"""``kairos bench copybook``: the copy book's window against asking for every miss, with a modelled copy agent."""

from __future__ import annotations

from prometheus_client import REGISTRY

from kairos.agents.bench_copybook import ModelledCopyAgent, NominalClock, bench_copybook
from kairos.agents.settings import Settings
from kairos.engine.copywriting import CopyBook, CopyRequest


def test_the_modelled_agent_writes_in_order_a_batch_at_a_time_at_its_rate():
    clock = NominalClock()
    book = CopyBook(in_flight=100, clock=clock)
    agent = ModelledCopyAgent(answers_per_s=8.0)
    agent.queue.extend((f"i{n}", "cat:x") for n in range(20))
    agent.step(0.0, book)  # starts the first 16: done two seconds later
    assert len(agent.batch) == 16 and agent.done_at == 2.0
    agent.step(1.9, book)
    assert agent.answers == 0
    agent.step(2.0, book)  # the 16 land in the copy book, the last 4 start
    assert agent.answers == 16 and len(agent.batch) == 4 and agent.done_at == 2.5
    assert book.lookup(CopyRequest("i15", "cat:x", "item 15")) == "copy for i15 (cat:x)"
    assert book.lookup(CopyRequest("i16", "cat:x", "item 16")) != "copy for i16 (cat:x)"


def test_bench_copybook_runs_both_policies_on_the_same_events(tmp_path):
    (tmp_path / "no-models").mkdir()
    settings = Settings(kafka_bootstrap_servers=None, redis_url=None, model_dir=tmp_path / "no-models", data_dir=None)
    result = bench_copybook(settings, None, "simulated", events=600, rate=50.0, answers_per_s=4.0, in_flight=8)
    window, every_miss = result["window"], result["every_miss"]
    assert result["events"] == 600 and result["nominal_seconds"] == 12.0 and "SIMULATED" in result["source"]
    assert window["lookups"] == every_miss["lookups"] > 0  # the same recommendations: copy never changes them
    assert window["in_flight"] == 8 and every_miss["in_flight"] is None
    # the window: never more than 8 asked for and not answered; every miss: one request per key missed
    assert window["requests_sent"] <= window["answers"] + 8 and window["agent_backlog"] <= 8
    assert every_miss["requests_sent"] > window["requests_sent"]
    assert every_miss["agent_backlog"] == every_miss["requests_sent"] - every_miss["answers"]
    for run in (window, every_miss):
        assert 0 < run["answers"] <= 4.0 * 12 and 0 <= run["answered_lookups"] <= run["lookups"]
        assert run["coverage"] == round(run["answered_lookups"] / run["lookups"], 5)
    assert window["coverage"] >= every_miss["coverage"]
    # the pipeline exports the copy book's lookups and its queue (the last run's: every miss asked, some answered)
    misses = REGISTRY.get_sample_value("kairos_cache_lookups_total", {"cache": "copy", "result": "miss"})
    assert misses >= sum(run["lookups"] - run["answered_lookups"] for run in (window, every_miss))
    outstanding = REGISTRY.get_sample_value("kairos_copy_requests", {"state": "outstanding"})
    assert outstanding == every_miss["requests_sent"] - every_miss["answers"]
