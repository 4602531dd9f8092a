"""Training past one machine: two MultiWorkerMirroredStrategy workers on 127.0.0.1 (CPU) train one
model in step; only the chief writes the run folder, and it has learnt."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_two_local_workers_train_one_model_and_only_the_chief_writes(synthetic_breakhis, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    run = tmp_path / "multiworker"
    command = [sys.executable, "-m", "core", "train", "--data", str(synthetic_breakhis), "--out", str(run),
               "--backbone", "small_cnn", "--weights", "none", "--input-size", "64", "--batch-size", "16",
               "--epochs", "12", "--patience", "12", "--no-baselines"]  # 8 once reached only 0.625 on a loaded machine
    workers = []
    for index in range(2):
        environment = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                                         "index": index}}),
                       "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        workers.append(subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[1][-3000:] + outputs[0][-3000:]
    ends = [[e for e in _events(out) if e["event"] == "end"][-1] for out in outputs]
    assert [e["status"] for e in ends] == ["completed", "completed"]
    assert ends[0]["weights_fingerprint"] == ends[1]["weights_fingerprint"]  # the workers agreed on the weights
    assert ends[0]["model_dir"] == str(run / "model") and ends[1]["model_dir"] is None
    start = [e for e in _events(outputs[0]) if e["event"] == "start"][0]
    assert "CollectiveAllReduceStrategy x2" in start["message"]  # MultiWorkerMirroredStrategy, by its class name
    # One complete run folder, the chief's; the other worker left nothing behind.
    for name in ("config.json", "split.csv", "history.csv", "progress.jsonl", "metrics.json", "model/model.keras"):
        assert (run / name).is_file(), name
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("breakhis-worker1-*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stage1_accuracy"] >= 0.75  # learnt well above chance (0.5) on held-out cases
