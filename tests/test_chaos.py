"""The chaos run of `bench/chaos.py`, small: three replicas, SIGKILLed and restarted while jobs
go through, the provider failing some jobs and answering some calls with 5xx. Every job ends,
the ledger holds, every request is answered, and the duplicates are counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos import ChaosPlan, describe, run_chaos

PLAN = ChaosPlan(
    jobs=60,
    users=10,
    replicas=3,
    kills=4,
    kill_every_seconds=3.0,
    failure_rate=0.1,
    processing_seconds=0.5,
    lease_seconds=3.0,
    settle_seconds=90.0,
)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("database_kind", ["postgresql"])
async def test_chaos_loses_nothing_and_pays_once(empty_database_url: str, tmp_path: Path) -> None:
    report = await run_chaos(PLAN, empty_database_url, tmp_path)
    print("\n".join(describe(report)))
    assert report.kills == PLAN.kills
    assert report.unfinished == 0, report.job_states
    assert report.ledger_problems == []
    assert report.unanswered == [], report.unanswered
    assert sum(report.job_states.values()) == PLAN.jobs  # one job per request, none twice
    assert report.rate_limited == 0
    assert report.server_errors > 0  # the provider did answer some calls with 5xx
    assert report.job_states.get("failed", 0) > 0  # and failed some jobs
    assert report.exits == [0, 0, 0]
