"""An application that embeds poolwatch as a library, for the end-to-end test.

    python -m tests.e2e.workload URL METRICS_PORT

Instruments a deliberately small pool (size 1, no overflow, 0.2 s timeout) with
``poolwatch.instrument(engine, name="e2e")`` and serves prometheus_client's default registry on
127.0.0.1:METRICS_PORT. Prints ``ready`` once serving, then obeys commands on stdin, one a line:
``load`` starts threads that hold the only connection in turn, so most checkouts time out;
``stop`` stops them; end of input exits.
"""

from __future__ import annotations

import sys
import threading

import sqlalchemy.exc
from prometheus_client import start_http_server
from sqlalchemy import create_engine

import poolwatch

WORKERS = 4
HOLD_SECONDS = 0.3
COUNTS_LOCK = threading.Lock()


def checkout_once(engine: sqlalchemy.Engine) -> str:
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_sleep({HOLD_SECONDS})")
    except sqlalchemy.exc.TimeoutError:
        return "timeout"
    return "ok"


def worker(engine: sqlalchemy.Engine, stop: threading.Event, counts: dict[str, int]) -> None:
    while not stop.is_set():
        outcome = checkout_once(engine)
        with COUNTS_LOCK:
            counts[outcome] += 1


def main() -> int:
    url, port = sys.argv[1], int(sys.argv[2])
    engine = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    poolwatch.instrument(engine, name="e2e")
    server, _thread = start_http_server(port, addr="127.0.0.1")
    print("ready", flush=True)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    counts = {"ok": 0, "timeout": 0}
    for line in sys.stdin:
        command = line.strip()
        if command == "load" and not threads:
            stop.clear()
            threads = [threading.Thread(target=worker, args=(engine, stop, counts)) for _ in range(WORKERS)]
            for thread in threads:
                thread.start()
        elif command == "stop":
            stop.set()
            for thread in threads:
                thread.join()
            threads = []
            print(f"stopped ok={counts['ok']} timeout={counts['timeout']}", flush=True)
    stop.set()
    for thread in threads:
        thread.join()
    server.shutdown()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
