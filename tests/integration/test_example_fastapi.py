"""examples/fastapi as shipped: gunicorn with its config (four UvicornWorkers) against a real PostgreSQL;
the endpoint shows every worker's pool, slow requests as connections in use."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.integration.test_multiprocess import wait_for
from tests.servers import LOOPBACK, free_port

if TYPE_CHECKING:
    from tests.servers import PostgresServer

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi"
WORKERS, POOL_SIZE, SLOW = 4, 5, 6


def test_the_example_app_exports_every_workers_pool(pg: PostgresServer, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": pg.url(),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "POOLWATCH_MULTIPROC_INTERVAL": "0.2",
        "BIND": f"{LOOPBACK}:{port}",
        "PYTHONPATH": str(EXAMPLE.parents[1]),
    }
    config = EXAMPLE / "gunicorn.conf.py"
    process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(config)], env=env, cwd=tmp_path)
    base = f"http://{LOOPBACK}:{port}"
    client = httpx.Client(timeout=60, follow_redirects=True)

    def value(name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        wanted = {"pool": "orders", **labels}
        try:
            response = client.get(f"{base}/metrics")
        except httpx.TransportError:
            return -1.0
        assert response.status_code == 200, f"/metrics answered {response.status_code}: {response.text[:200]}"
        text = response.text
        return sum(  # over the server label (one server) and, for use time, the holder label
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == f"poolwatch_{name}" and wanted.items() <= sample.labels.items()
        )

    def get(path: str) -> int:
        return int(
            client.get(f"{base}{path}", headers={"Connection": "close"}).raise_for_status().json()["worker"]
        )

    try:
        wait_for(lambda: value("pool_size") == WORKERS * POOL_SIZE, "four workers up")
        quick = [get(f"/orders/{n}") for n in range(20)]
        with ThreadPoolExecutor(SLOW) as executor:
            slow = [executor.submit(get, "/report?seconds=20") for _ in range(SLOW)]
            wait_for(
                lambda: value("pool_connections", state="used") == SLOW, "slow requests hold connections"
            )
            for future in slow:
                future.result()
        wait_for(lambda: value("pool_connections", state="used") == 0, "connections returned")
        wait_for(lambda: value("pool_checkouts_total") == len(quick) + SLOW, "checkouts equal requests")
        # The slow requests held their connections past 10 s; the quick ones did not.
        assert value("pool_use_seconds_count") - value("pool_use_seconds_bucket", le="10.0") == SLOW
    finally:
        client.close()
        process.terminate()
        process.wait(30)
