"""Retries and timeouts by kind of task, declared once and spread onto each ``@task``.

- network: talks to other machines (image hosts, the MLflow server, the model server); a
  hiccup often heals, so retry with growing delays.
- cpu: decodes, hashes, writes files; a failure is deterministic, so a retry only wastes
  time — fail at once with the error.
- accelerator: trains or scores models; one retry covers a lost device or a pre-empted
  worker, a second would only repeat a real bug.

No task-level timeouts: tasks run in worker threads, where Prefect cannot interrupt them;
the deadlines that matter are enforced inside (per URL in downloads, per request in
redeploys), and each flow, which runs in its process's main thread, has an overall limit
(``timeout_seconds`` on its ``@flow``) so that nothing scheduled runs forever.

No task caches its inputs (``cache_policy=NONE``): their inputs are paths and small records
whose files change underneath, and some hold sessions or models that must not be hashed.
"""

from __future__ import annotations

from prefect.cache_policies import NONE

HOUR = 3600

NETWORK = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "cache_policy": NONE}
CPU = {"retries": 0, "cache_policy": NONE}
ACCELERATOR = {"retries": 1, "retry_delay_seconds": 10, "cache_policy": NONE}
