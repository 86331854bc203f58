"""An application poolwatch watches: FastAPI on gunicorn with four UvicornWorkers (gunicorn.conf.py).

    DATABASE_URL=postgresql+psycopg2://app:secret@127.0.0.1/orders \\
    PROMETHEUS_MULTIPROC_DIR=/tmp/app-metrics gunicorn -c examples/fastapi/gunicorn.conf.py

Routes: ``GET /orders/{order_id}`` (a quick query), ``GET /report?seconds=2`` (a slow one that holds
its connection while PostgreSQL sleeps: enough of them at once exhaust the pool), and ``/metrics``
(every worker's pools, through prometheus_client's multiprocess recipe). ``DATABASE_PASSWORD_FILE``
reads the password from a file (a container secret) instead of the URL. Each request's route
template (``GET /report``) is the holder of the connections it checks out (``HolderMiddleware``).

The pool of each worker: ``POOL_SIZE`` (5), ``POOL_MAX_OVERFLOW`` (2), ``POOL_TIMEOUT`` (5 seconds)
and ``POOL_LEAK_THRESHOLD`` (30 seconds), from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import poolwatch

url = make_url(os.environ["DATABASE_URL"])
if os.environ.get("DATABASE_PASSWORD_FILE"):
    url = url.set(password=Path(os.environ["DATABASE_PASSWORD_FILE"]).read_text(encoding="utf-8").strip())

# Created in each worker (the config does not preload the application): no connection is shared
# across a fork.
engine = create_engine(
    url,
    pool_size=int(os.environ.get("POOL_SIZE", "5")),
    max_overflow=int(os.environ.get("POOL_MAX_OVERFLOW", "2")),
    pool_timeout=float(os.environ.get("POOL_TIMEOUT", "5")),
    pool_pre_ping=True,
)
poolwatch.instrument(engine, name="orders", leak_threshold=float(os.environ.get("POOL_LEAK_THRESHOLD", "30")))

app = FastAPI(title="poolwatch example")
app.add_middleware(poolwatch.HolderMiddleware)
app.mount("/metrics", poolwatch.make_asgi_app())


@app.get("/orders/{order_id}")
def get_order(order_id: int) -> dict[str, Any]:
    with engine.connect() as connection:
        found = connection.execute(text("SELECT :id AS id"), {"id": order_id}).scalar_one()
    return {"id": found, "worker": os.getpid()}


@app.get("/report")
def report(seconds: float = 2.0) -> dict[str, Any]:
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_sleep(:s)"), {"s": max(0.0, min(seconds, 30.0))})
    return {"seconds": seconds, "worker": os.getpid()}
