"""`keras-selffb train --strategy mirrored` on 2 logical CPUs equals the default run.

The mirrored run is a subprocess: the test process already holds its own
MirroredStrategy, and two in one process can collide on collective keys.
"""

import contextlib
import io
import json
import subprocess
import sys

import pytest
import yaml

from keras_selffb.cli import main

SCRIPT = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_selffb.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_mirrored_cli_run_equals_default(tmp_path):
    lines = [json.dumps({"prompt": f"{p} {i}", "response": r}, ensure_ascii=False)
             for i in range(8) for p, r in [("hello", "hi there"), ("你好", "你好！"), ("café?", "oui, café.")]]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines), encoding="utf-8")
    # No dropout: the replicas would draw other masks than one device.
    config = {"embedding_dim": 16, "hidden_dim": 32, "batch_size": 8, "learning_rate": 0.01, "dropout": 0.0,
              "prompt_length": 16, "response_length": 12, "num_samples": 1, "epochs": 2,
              "feedback_rounds": 0, "judge_epochs": 0, "reward_judge": 0.0}  # the MLE stage is what is compared
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    reports, outputs = {}, {}
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--data", str(tmp_path / "pairs.jsonl")]
    # The default run in this process (its TensorFlow, too, has two logical
    # CPUs); the mirrored one in a fresh process, which builds its own strategy.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv + ["--output", str(tmp_path / "default"), "--strategy", "default"]) == 0
    outputs["default"] = printed.getvalue()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv, "--output", str(tmp_path / "mirrored"), "--strategy", "mirrored"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs["mirrored"] = result.stdout
    for strategy in outputs:
        reports[strategy] = json.loads((tmp_path / strategy / "metrics.json").read_text(encoding="utf-8"))
    assert "MirroredStrategy, 2 replica(s)" in outputs["mirrored"]
    assert "1 replica(s)" in outputs["default"]
    for key in ("validation_perplexity", "test_perplexity"):
        assert reports["mirrored"]["mle"][key] == pytest.approx(reports["default"]["mle"][key], rel=1e-4), key
    assert reports["mirrored"]["mle"]["epochs"] == reports["default"]["mle"]["epochs"] == 2
