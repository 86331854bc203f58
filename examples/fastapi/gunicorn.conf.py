"""gunicorn settings for the example: four UvicornWorkers, recycled, with prometheus_client's
multiprocess clean-up. ``PROMETHEUS_MULTIPROC_DIR`` must name a directory emptied at start.
``BIND``, ``WORKERS``, ``MAX_REQUESTS`` and ``MAX_REQUESTS_JITTER`` change the defaults below."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import multiprocess

wsgi_app = "app:app"
chdir = os.path.dirname(os.path.abspath(__file__))  # noqa: PTH100, PTH120 - gunicorn reads a plain str
bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "4"))
worker_class = "uvicorn.workers.UvicornWorker"
max_requests = int(os.environ.get("MAX_REQUESTS", "1000"))
max_requests_jitter = int(os.environ.get("MAX_REQUESTS_JITTER", "100"))
preload_app = False  # each worker opens its own pool after the fork


def child_exit(_server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)
