"""The real MLflow server (what `make ui` starts) on a free loopback port: runs logged through
mae.track, over HTTP and straight into its SQLite store, are visible through its REST API, with
their params, metrics and artifacts, and so are the tables of a `report` run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from mae import track
from mae.config import TABLE_AXES, ExperimentConfig, flatten_config
from mae.report.cli import main

pytestmark = pytest.mark.slow  # whole studies, real stores and servers

MLFLOW = Path(sys.executable).with_name("mlflow")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("server")
    db_uri = f"sqlite:///{root / 'mlruns.db'}"
    track.init_store(db_uri, "micro")  # schema first, as the launcher does before jobs start
    port = _free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--backend-store-uri",
            db_uri,
            "--artifacts-destination",
            str(root / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or too busy starting to answer
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()}")
            time.sleep(0.5)
        yield {"url": url, "db_uri": db_uri, "root": root}
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its workers, nothing else
        process.wait(timeout=30)
        log.close()


def _search(url: str, experiment_id: str, where: str = "") -> list[dict]:
    reply = requests.post(
        f"{url}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [experiment_id], "filter": where},
        timeout=30,
    )
    reply.raise_for_status()
    return reply.json().get("runs", [])


def _artifacts(url: str, run_id: str, path: str = "") -> set[str]:
    reply = requests.get(
        f"{url}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": path}, timeout=30
    )
    reply.raise_for_status()
    return {f["path"] for f in reply.json().get("files", [])}


def runs_artifact_uri(url: str, run_id: str) -> str:
    reply = requests.get(f"{url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30)
    reply.raise_for_status()
    return reply.json()["run"]["info"]["artifact_uri"]


def _log_run(
    uri: str,
    experiment_id: str,
    key: str,
    stage: str,
    ratio: float,
    top1: float,
    picture: Path,
    parent: str | None = None,
) -> str:
    params = flatten_config(ExperimentConfig())
    params.update({f"label.{axis}": params[axis] for axis in TABLE_AXES})
    params["label.masking.ratio"] = str(ratio)
    params["label.decoder.depth"], params["label.decoder.width"] = "8", "512"
    params["label.pretrain.epochs"] = "800"
    run_id = track.open_run(
        uri,
        experiment_id,
        key=key,
        stage=stage,
        run_name=f"{stage} {ratio}",
        params=params,
        tags={"study": "mask_ratio_sweep", "scale": "micro"},
        parent_run_id=parent,
    )
    logger = track.MlflowLogger(uri, run_id)
    logger.log_metrics({f"{stage}/top1": top1 - 1}, step=1)
    logger.log_final({f"{stage}/top1": top1})
    logger.log_artifact(picture)
    track.finish_run(uri, run_id)
    return run_id


def test_runs_logged_over_http_and_sqlite_are_served(server, tmp_path):
    url, db_uri = server["url"], server["db_uri"]
    picture = tmp_path / "reconstruction.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    experiment_id = track.init_store(url, "micro")
    assert experiment_id == track.init_store(db_uri, "micro")  # one store, two ways in
    over_http = _log_run(url, experiment_id, "k-http", "finetune", 0.75, 61.0, picture)
    direct = _log_run(db_uri, experiment_id, "k-sqlite", "linprobe", 0.75, 41.0, picture)
    child = _log_run(url, experiment_id, "k-child", "finetune", 0.5, 55.0, picture, over_http)

    runs = {r["info"]["run_id"]: r for r in _search(url, experiment_id)}
    assert {over_http, direct, child} <= set(runs)
    run = runs[over_http]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["masking.ratio"] == "0.75" and params["label.decoder.width"] == "512"
    assert len(params) == len(flatten_config(ExperimentConfig())) + len(TABLE_AXES)
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics == {"finetune/top1": 60.0, "final/finetune/top1": 61.0}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["content_key"] == "k-http" and tags["stage"] == "finetune"
    child_tags = {t["key"]: t["value"] for t in runs[child]["data"]["tags"]}
    assert child_tags["mlflow.parentRunId"] == over_http
    assert _search(url, experiment_id, "tags.content_key = 'k-sqlite'")[0]["info"]["run_id"] == (
        direct
    )
    for run_id in (over_http, direct):
        assert _artifacts(url, run_id) == {"reconstruction.png"}

    # An experiment created over HTTP keeps its artifacts behind the server's proxy.
    served = track.init_store(url, "small")
    proxied = _log_run(url, served, "k-proxy", "finetune", 0.75, 50.0, picture)
    assert runs_artifact_uri(url, proxied).startswith("mlflow-artifacts:")
    assert _artifacts(url, proxied) == {"reconstruction.png"}
    assert (server["root"] / "mlartifacts" / served / proxied / "artifacts" / picture.name).exists()

    keys = ["k-http", "k-sqlite"] + [f"nope{i}" for i in range(track.KEYS_PER_QUERY_LIMIT)]
    found = track.find_runs(url, experiment_id, keys[:3])  # one search per key
    assert {k: r.run_id for k, r in found.items()} == {"k-http": over_http, "k-sqlite": direct}
    assert track.find_runs(url, experiment_id, keys) == found  # one search for all
    frame = track.runs_frame(url, "micro").set_index("run_id")  # the search_runs path
    assert frame.loc[child, "metrics.final/finetune/top1"] == 55.0
    assert frame.loc[direct, "params.label.masking.ratio"] == "0.75"


def test_report_over_http_lands_as_artifacts(server, tmp_path, capsys):
    url = server["url"]
    out = tmp_path / "out"
    assert (
        main(
            ["--scale", "micro", "--tracking-uri", url, "--only", "fig5,table1a", "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| 75 ★" in printed and "61.0" in printed  # the HTTP-logged ft run fills Fig. 5
    experiment_id = track.find_experiment(url, "micro")
    reports = _search(url, experiment_id, "tags.stage = 'report'")
    assert len(reports) == 1
    logged = _artifacts(url, reports[0]["info"]["run_id"], "report")
    assert {"report/fig5.png", "report/fig5.md", "report/table1a.tex", "report/report.md"} <= logged
    reply = requests.get(
        f"{url}/get-artifact",
        timeout=30,
        params={"run_id": reports[0]["info"]["run_id"], "path": "report/fig5.md"},
    )
    assert reply.status_code == 200 and "Fig. 5: masking ratio" in reply.text
