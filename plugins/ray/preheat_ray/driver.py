"""The driver of one run: `python -m preheat_ray.driver STORE_URL RUN`.

Started as a Ray job's entrypoint (the job sets `RAY_ADDRESS`), or without a
cluster as a detached local process that starts its own Ray instance. It runs
the whole pipeline with `preheat.api.execute_run`, the file transfers on Ray
tasks (`RayTransfers`) and so the parts of a shard, one task per rank
(`RayShards`); the record, the log, the lease, the journal and the publish
stay here. SIGTERM or SIGINT (`ray job stop`, `preheat runs cancel`) cancels
the run cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    """Run one record to completion on Ray; exit 0 when it succeeded."""
    store_url, run = (argv if argv is not None else sys.argv[1:])[:2]
    cancel = threading.Event()

    def stop(signum, frame):
        cancel.set()

    # the job's own output (`ray job logs`) shows the run's progress too
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("preheat").addHandler(out)

    import ray

    from preheat.api import execute_run
    from preheat_ray.shards import RayShards
    from preheat_ray.transfers import RayTransfers

    address = os.environ.get("RAY_ADDRESS") or None
    ray.init(
        address=address,
        logging_level=logging.WARNING,
        include_dashboard=False if address is None else None,
        log_to_driver=True,
    )
    # after ray.init, which installs its own SIGTERM handler (exit at once)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        record = execute_run(
            store_url, run, cancel=cancel, transfers=RayTransfers(), shards=RayShards()
        )
    finally:
        ray.shutdown()
    print(f"run {run} {record.status}" + (f": {record.error}" if record.error else ""))
    return 0 if record.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
