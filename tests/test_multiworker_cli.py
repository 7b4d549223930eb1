"""`keras-selffb train --strategy multi_worker`: two worker processes on localhost.

The whole pipeline (MLE, one self-feedback round, evaluation, report) runs
on a two-worker `MultiWorkerMirroredStrategy` cluster given by `TF_CONFIG`,
with the `rl` and `filtered` methods in its round (the filtered method's
weighted rows travel as one float32 tensor per batch). The chief writes the
run directory, the other worker a sibling one; both end with the same
figures and weights. (The loop feeds the `contrastive` method as it feeds
`rl`; `ContrastiveTrainer` itself is trained by two workers in
tests/test_multiworker.py.)
"""

import json
import os
import socket
import subprocess
import sys

import keras
import keras_selffb.models  # noqa: F401 (registers PolicyNetwork for load_model)
import numpy as np
import pytest
import yaml


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_worker_pipeline_ends_identical_on_both_workers(tmp_path):
    methods = "rl,filtered"  # one round runs both, in this order
    lines = [json.dumps({"prompt": f"{p} {i}", "response": r}, ensure_ascii=False)
             for i in range(8) for p, r in [("hello", "hi there"), ("你好", "你好！"), ("café?", "oui, café.")]]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines), encoding="utf-8")
    config = {"embedding_dim": 16, "hidden_dim": 32, "batch_size": 8, "learning_rate": 0.01,
              "prompt_length": 16, "response_length": 12, "num_samples": 1, "epochs": 2,
              "feedback_rounds": 1, "feedback_methods": methods, "rl_steps": 4, "rl_batch_size": 4,
              "rl_samples": 2, "feedback_keep_best": False, "feedback_min_distinct": 0.0}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    workers = [f"localhost:{free_port()}", f"localhost:{free_port()}"]
    run = tmp_path / "run"
    processes = []
    try:
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="3")
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "keras_selffb.cli", "train", "--config", str(tmp_path / "c.yaml"),
                 "--data", str(tmp_path / "pairs.jsonl"), "--output", str(run), "--strategy", "multi_worker"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        results = [p.communicate(timeout=600) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(processes, results):
        assert p.returncode == 0, err[-3000:]
    assert "2 replica(s)" in results[0][0]
    worker_dir = tmp_path / "run.worker_1"
    chief = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    other = json.loads((worker_dir / "metrics.json").read_text(encoding="utf-8"))
    assert chief["mle"]["validation_perplexity"] == other["mle"]["validation_perplexity"]
    assert [r["metrics"] for r in chief["rounds"]] == [r["metrics"] for r in other["rounds"]]
    a = keras.saving.load_model(run / "policy.keras").get_weights()
    b = keras.saving.load_model(worker_dir / "policy.keras").get_weights()
    mle = keras.saving.load_model(run / "policy_mle.keras").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert max(np.abs(x - y).max() for x, y in zip(a, mle)) > 0  # the round moved the weights
