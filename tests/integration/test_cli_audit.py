"""``poolwatch audit``: recent records as a table or JSON; one-line errors with exit codes."""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from poolwatch.cli import main
from poolwatch.config import validate
from poolwatch.reaper.audit import AuditLog, AuditRecord
from tests.servers import free_port

pytestmark = pytest.mark.integration


def write_config(tmp_path, audit):
    path = tmp_path / "poolwatch.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "targets": [{"name": "x", "kind": "sqlite", "url": f"sqlite:///{tmp_path}/x.db"}],
                "audit": audit,
            }
        )
    )
    return str(path)


def test_audit_lists_recent_records(pg, tmp_path, capsys):
    database = f"cliaudit_{uuid.uuid4().hex[:6]}"
    pg.create_database(database)
    audit = {"url": pg.url(database=database)}
    log = AuditLog(validate({"audit": audit}).audit)
    for pid, mode in ((41, "dry_run"), (42, "enforce")):
        log.record(
            AuditRecord.make(
                target="orders",
                kind="postgres",
                pid=pid,
                username="web",
                database="orders",
                application="web-1",
                client_addr="10.0.0.7",
                state="idle",
                idle_seconds=4000.0,
                query="SELECT 1",
                backend_start=None,
                reason="idle",
                mode=mode,
            )
        )
    assert log.flush() == 2
    log.close()
    spool = tmp_path / "spool.db"
    config = write_config(tmp_path, {**audit, "spool_path": str(spool)})
    assert main(["audit", "-c", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["DECIDED", "(UTC)", "TARGET"]
    assert [line.split()[5] for line in lines[1:]] == ["42", "41"]  # newest first
    assert "4000s" in lines[1]
    assert main(["audit", "-c", config, "--mode", "enforce", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["pid"] for r in rows] == [42]
    assert main(["audit", "-c", config, "--target", "nope"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert not spool.exists()  # looking at the spool never creates it (it may be the daemon's user's)


def test_audit_without_an_audit_database_is_a_config_error(tmp_path, capsys):
    config = write_config(tmp_path, {})
    assert main(["audit", "-c", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("poolwatch: error: audit.url is not configured")
    assert len(err.splitlines()) == 1


def test_audit_database_down_is_one_line_and_exit_1(tmp_path, capsys):
    url = f"postgresql://audit:hunter2@127.0.0.1:{free_port()}/audit"
    config = write_config(tmp_path, {"url": url, "connect_timeout": 2})
    assert main(["audit", "-c", config]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "hunter2" not in err
    assert "refused" in err.lower()
