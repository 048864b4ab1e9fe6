"""The lease rules of store/rules.py, judged without a store: fencing, acquire, release, claims.

:func:`rules.orphaned` and its SQL twin :data:`rules.ORPHANED_SQL` (which the backends select
claimable runs with) must agree on every state: a property, checked on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runstore.client.problems import LeaseHeld, LeaseLost, RunNotFound
from runstore.service.store import rules
from runstore.service.store.rules import RunState

NOW = 1_800_000_000_000
BASE = RunState(3, "running", 1, None, 2, None)


def leased(lease: int, holder: str, expires_at: int | None, ttl: int = 30_000) -> RunState:
    return BASE.with_lease(lease, holder, expires_at, ttl)


def test_a_write_without_the_header_meets_a_live_lease() -> None:
    state = leased(2, "w1", NOW + 1500)
    with pytest.raises(LeaseHeld) as held:
        rules.delete("r", state, None, None, NOW)
    assert (held.value.holder, held.value.expires_at, held.value.retry_after) == (
        "w1",
        NOW + 1500,
        2,
    )
    # Expired or released: it proceeds.
    rules.delete("r", leased(2, "w1", NOW), None, None, NOW)
    rules.delete("r", leased(2, "w1", None), None, None, NOW)


@pytest.mark.parametrize(
    ("state", "lease", "allowed"),
    [
        (leased(2, "w1", NOW + 1), 2, True),  # latest and live
        (leased(2, "w1", NOW - 1), 2, True),  # latest, expired, nobody took a newer one
        (leased(2, "w1", None), 2, True),  # latest, released
        (leased(2, "w1", NOW + 1), 1, False),  # superseded
        (leased(2, "w1", NOW + 1), 3, False),  # never granted
        (BASE, 1, False),  # no lease ever
    ],
)
def test_fencing_goes_by_the_latest_number(state: RunState, lease: int, allowed: bool) -> None:
    if allowed:
        rules.delete("r", state, None, lease, NOW)
    else:
        with pytest.raises(LeaseLost):
            rules.delete("r", state, None, lease, NOW)


def test_put_and_patch_keep_the_lease() -> None:
    from runstore.service.store.records import patch_record

    state = leased(4, "w1", NOW + 10)
    change = rules.patch(
        "r",
        state,
        '{"runId":"r","status":"running","startedAt":1}',
        patch_record({"status": "x"}),
        None,
        4,
        NOW,
    )
    assert change.state.lease == 4
    assert change.state.lease_holder == "w1"
    assert change.state.lease_expires_at == NOW + 10


def test_acquire_renew_release() -> None:
    with pytest.raises(RunNotFound):
        rules.acquire("r", None, "w1", 1000, None, NOW)
    state, lease = rules.acquire("r", BASE, "w1", 5000, None, NOW)
    assert (lease.lease, lease.expires_at, state.lease_expires_at) == (1, NOW + 5000, NOW + 5000)
    # Again by its holder: the same lease, extended.
    state, again = rules.acquire("r", state, "w1", 5000, None, NOW + 10)
    assert (again.lease, again.expires_at) == (1, NOW + 5010)
    with pytest.raises(LeaseHeld):
        rules.acquire("r", state, "w2", 5000, None, NOW + 10)
    with pytest.raises(LeaseHeld):  # renewing the live lease as another holder
        rules.acquire("r", state, "w2", 5000, 1, NOW + 10)
    # Expired: the holder may still renew it; another holder gets the next number.
    _, renewed = rules.acquire("r", state, "w1", 5000, 1, NOW + 6000)
    assert renewed.lease == 1
    state, taken = rules.acquire("r", state, "w2", 5000, None, NOW + 6000)
    assert taken.lease == 2
    with pytest.raises(LeaseLost):
        rules.acquire("r", state, "w1", 5000, 1, NOW + 6000)
    released = rules.release("r", state, 2, NOW + 6001)
    assert released.lease_expires_at is None
    assert rules.release("r", released, 2, NOW + 7000) == released  # safe to repeat
    with pytest.raises(LeaseLost):
        rules.release("r", released, 1, NOW)
    with pytest.raises(LeaseLost):  # a released lease cannot be renewed
        rules.acquire("r", released, "w2", 5000, 2, NOW + 6002)
    assert rules.acquire("r", released, "w3", 5000, None, NOW + 6002)[1].lease == 3


states = st.builds(
    lambda completed, lease, expires, updated: (
        BASE._replace(completed_at=completed).with_lease(
            lease, "w" if lease else None, expires if lease else None, 1000 if lease else None
        ),
        updated,
    ),
    st.none() | st.integers(0, NOW),
    st.integers(0, 3),
    # The boundaries (expiring now, written exactly stale_after ago) as often as the rest.
    st.none() | st.sampled_from([NOW - 1, NOW, NOW + 1]) | st.integers(NOW - 2000, NOW + 2000),
    st.sampled_from([NOW - 30_000, NOW]) | st.integers(NOW - 120_000, NOW),
)
stale_afters = st.sampled_from([0, 30_000]) | st.integers(0, 60_000)


def _orphaned_in_sql(connection: Any, mark: str, state: RunState, updated: int, stale: int) -> bool:
    """ORPHANED_SQL evaluated by the database over a one-row table of ``state``."""
    columns = ", ".join(
        f"{mark} AS {name}" for name in ("completed_at", "lease", "lease_expires_at", "updated_at")
    )
    condition = rules.ORPHANED_SQL.format(now=mark, stale=mark)
    # The parameters in the order their marks appear: the condition's, then the row's.
    template = rules.ORPHANED_SQL.format(now="{now}", stale="{stale}")
    order = [NOW if part.startswith("now}") else stale for part in template.split("{")[1:]]
    params = (*order, state.completed_at, state.lease, state.lease_expires_at, updated)
    sql = f"SELECT {condition} FROM (SELECT {columns}) AS runs"
    row = connection.execute(sql, params).fetchone()
    return bool(row[0])


@settings(max_examples=300, deadline=None)
@given(states, stale_afters)
def test_orphaned_and_its_sql_agree_on_sqlite(case: tuple[RunState, int], stale: int) -> None:
    state, updated = case
    connection = sqlite3.connect(":memory:")
    expected = rules.orphaned(state, updated, NOW, stale)
    assert _orphaned_in_sql(connection, "?", state, updated, stale) == expected


@pytest.mark.postgres
def test_orphaned_and_its_sql_agree_on_postgres(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:

        @settings(max_examples=150, deadline=None)
        @given(states, stale_afters)
        def agree(case: tuple[RunState, int], stale: int) -> None:
            state, updated = case
            expected = rules.orphaned(state, updated, NOW, stale)
            # PostgreSQL needs the parameters' types where nothing else says them.
            mark = "%s::bigint"
            assert _orphaned_in_sql(connection, mark, state, updated, stale) == expected

        agree()
