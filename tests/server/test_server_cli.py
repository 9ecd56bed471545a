"""``memrag serve``: the command wires its options into the app (served in-process here)."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from server_helpers import openai_client


@pytest.fixture
def restore_access_logger():
    """``memrag serve`` points the access log at stderr; undo that after the test."""
    from memrag.server.middleware import access_logger

    handlers, propagate, level = (
        list(access_logger.handlers),
        access_logger.propagate,
        access_logger.level,
    )
    yield access_logger
    access_logger.handlers[:] = handlers
    access_logger.propagate, access_logger.level = propagate, level


def test_memrag_serve(saved_store, monkeypatch, restore_access_logger):
    from typer.testing import CliRunner

    from memrag.cli.app import app
    from memrag.server.runner import ServerThread

    (saved_store / "key").write_text("cli-key\n")
    seen = {}

    def run_in_thread(application, host, port, *, log_level):
        seen.update(host=host, port=port, settings=application.state.memrag.settings)
        records = []
        restore_access_logger.addHandler(_ListHandler(records))
        with ServerThread(application) as server:
            assert httpx.get(server.base_url + "/v1/models").status_code == 401
            completion = openai_client(server, api_key="cli-key").chat.completions.create(
                model="memrag",
                messages=[{"role": "user", "content": "When was the Eiffel Tower completed?"}],
            )
            seen["completion"] = completion
        seen["log"] = [json.loads(r.getMessage()) for r in records]

    monkeypatch.setattr("memrag.server.runner.run_server", run_in_thread)
    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--store",
            str(saved_store / "store"),
            "--compressor",
            str(saved_store / "compressor"),
            "--port",
            "8123",
            "--api-key-file",
            str(saved_store / "key"),
            "--default-max-tokens",
            "4",
            "--max-queue",
            "2",
            "--max-batch-size",
            "4",
            "--batch-window-ms",
            "5",
            "--stop",
            "\n",
        ],
    )
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert settings.api_key == "cli-key" and settings.max_queue == 2 and settings.stop == ("\n",)
    assert (settings.max_batch_size, settings.batch_window_ms, settings.slots) == (4, 5.0, 4)
    completion = seen["completion"]
    assert completion.usage.completion_tokens <= 4
    assert completion.model_extra["memrag_documents"][0]["id"] == "tower"
    chat = [line for line in seen["log"] if line["path"] == "/v1/chat/completions"]
    assert len(chat) == 1 and chat[0]["status"] == 200 and chat[0]["batch_size"] == 1
    assert any(line["status"] == 401 for line in seen["log"])


def test_memrag_serve_reports_a_missing_store(tmp_path):
    from typer.testing import CliRunner

    from memrag.cli.app import app

    result = CliRunner().invoke(app, ["serve", "--store", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "error" in result.output


def test_memrag_serve_refuses_a_bad_kv_recovery(saved_store):
    from typer.testing import CliRunner

    from memrag.cli.app import app

    result = CliRunner().invoke(app, ["serve", "--store", str(saved_store), "--kv-recovery", "blend"])
    assert result.exit_code == 2
    assert "unknown recovery 'blend'" in result.output


class _ListHandler(logging.Handler):
    def __init__(self, records: list) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
