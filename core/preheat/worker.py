"""Entry point of a detached worker: `python -m preheat.worker STORE_URL RUN`."""

from __future__ import annotations

import sys
import threading


def main(argv: list[str] | None = None) -> int:
    """Run one run record to completion; exit 0 when it succeeded."""
    from preheat.runner import execute, install_cancel_signals

    store_url, run = (argv if argv is not None else sys.argv[1:])[:2]
    cancel = threading.Event()
    install_cancel_signals(cancel)
    record = execute(store_url, run, cancel=cancel)
    return 0 if record.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
