"""The replication queue with many workers at once, on both backends: every task runs once, and
an execution whose tasks finish together on several nodes still ends with the right status
(each finisher recounts its execution's tasks after the previous one committed)."""

from __future__ import annotations

from collections import Counter

from moorage.metadata.database import make_engine
from moorage.metadata.distribution.replication_records import SUCCEEDED, TaskSpec
from moorage.metadata.distribution.replication_store import ReplicationStore
from tests.access.test_postgres_concurrency import race

EXECUTIONS = 40
PER = 3
TASKS = EXECUTIONS * PER


def _work_queue(number: int, url: str) -> list[int]:
    engine = make_engine(url, pool_size=2)
    store = ReplicationStore(engine)
    done = []
    while (claimed := store.claim_task(f"node-{number}", 600)) is not None:
        task, _rule = claimed
        store.finish_task(task, f"node-{number}", error=None, retry_at=None, progress={})
        done.append(task.id)
    engine.dispose()
    return done


def test_concurrent_workers_run_each_task_once_and_finish_the_execution(
    metadata_url: str,
) -> None:
    engine = make_engine(metadata_url, pool_size=1)
    store = ReplicationStore(engine)
    endpoint = store.save_endpoint(
        None,
        {
            "name": "target",
            "url": "https://registry.invalid",
            "kind": "moorage",
            "timeout_seconds": 30,
        },
        None,
    )
    rule = store.save_rule(
        None,
        {
            "name": "copy-all",
            "endpoint_id": endpoint.id,
            "direction": "push",
            "filters": {},
            "trigger": "manual",
        },
    )
    # Small executions: the tasks of one are claimed side by side and finish together.
    executions = [
        store.create_execution(
            rule.id,
            "manual",
            "admin",
            [TaskSpec("copy", "team/app", "team/app", f"v{e}.{t}", None) for t in range(PER)],
        )
        for e in range(EXECUTIONS)
    ]

    done = race(_work_queue, metadata_url)

    counted = Counter(task for tasks in done for task in tasks)
    assert len(counted) == TASKS
    assert set(counted.values()) == {1}
    records = [store.execution(execution) for execution in executions]
    assert [record.status for record in records if record is not None] == [SUCCEEDED] * len(
        executions
    )
    engine.dispose()
