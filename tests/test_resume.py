"""Kill -9 a `keras-selffb train` run twice, rerun it, get the same numbers.

The run is killed once during MLE (after its first finished epoch) and once
inside the first self-feedback round (after the first checkpointed chunk of
RL steps), each time with SIGKILL, and started again with the same command.
Its final metrics and weights must equal those of a run that was never
interrupted, to the last bit.
"""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import keras_selffb.models  # noqa: F401 (registers PolicyNetwork for load_model)
import numpy as np
import pytest
import yaml
from conftest import CLI_PAIRS

CONFIG = {
    "embedding_dim": 16, "hidden_dim": 32, "batch_size": 8, "learning_rate": 0.01,
    "prompt_length": 24, "response_length": 16, "num_samples": 2, "epochs": 3, "patience": 3,
    "feedback_rounds": 1, "feedback_methods": "rl,filtered", "rl_steps": 20, "rl_batch_size": 4,
    "rl_samples": 2, "rl_learning_rate": 1e-3, "filter_epochs": 2, "seed": 5,
    # One round (the kill falls inside it; a second would check nothing
    # more). Its policy is the final one (no roll-back), so the test can
    # check that the round moved it; the composite reward's judge is on.
    "feedback_keep_best": False, "feedback_min_distinct": 0.0,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    lines = [
        json.dumps({"prompt": f"{p} {i}", "response": r}, ensure_ascii=False)
        for i in range(8) for p, r in CLI_PAIRS
    ]
    (root / "pairs.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    return root


def command(root, output):
    return [sys.executable, "-m", "keras_selffb.cli", "train", "--config", str(root / "config.yaml"),
            "--data", str(root / "pairs.jsonl"), "--output", str(output)]


def environment():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONHASHSEED", None)
    return env


def run_to_end(root, output):
    return finish(start(root, output))


def start(root, output):
    """Starts a run; its output goes to files (a full pipe would stall a run nobody reads yet)."""
    logs = [open(f"{output}.{name}", "w+", encoding="utf-8") for name in ("out", "err")]
    process = subprocess.Popen(command(root, output), env=environment(), stdout=logs[0], stderr=logs[1], text=True)
    process.logs = logs
    return process


def finish(process):
    process.wait(timeout=900)
    out, err = process.logs
    for log in process.logs:
        log.seek(0)
    assert process.returncode == 0, err.read()[-3000:]
    text = out.read()
    for log in process.logs:
        log.close()
    return text


def kill_when(root, output, ready, timeout=600):
    """Starts the run and SIGKILLs it as soon as `ready()` is true."""
    process = subprocess.Popen(command(root, output), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {process.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the kill point was never reached")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def epochs_done(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["epochs_done"]
    except (OSError, ValueError, KeyError):
        return 0


def test_sigkill_twice_then_resume_gives_the_uninterrupted_numbers(setup):
    root = setup
    reference_dir, killed_dir = root / "uninterrupted", root / "killed"
    reference = start(root, reference_dir)  # runs alongside the killed runs

    kill_when(root, killed_dir, lambda: epochs_done(killed_dir / "checkpoints" / "mle" / "state.json") >= 1)
    assert not (killed_dir / "mle.json").exists()  # killed mid-MLE
    rl_state = killed_dir / "checkpoints" / "loop" / "round_1" / "rl" / "state.json"
    kill_when(root, killed_dir, lambda: epochs_done(rl_state) >= 1)
    assert epochs_done(rl_state) < 2  # killed mid-round: one of two RL chunks done
    assert not (killed_dir / "checkpoints" / "loop" / "round_1.npz").exists()
    out = run_to_end(root, killed_dir)
    assert "MLE stage already finished" in out and "resuming after round 0" in out
    finish(reference)

    expected = json.loads((reference_dir / "metrics.json").read_text(encoding="utf-8"))
    resumed = json.loads((killed_dir / "metrics.json").read_text(encoding="utf-8"))
    for key in ("validation_perplexity", "test_perplexity", "epochs"):
        assert resumed["mle"][key] == expected["mle"][key], key
    assert [r["metrics"] for r in resumed["rounds"]] == [r["metrics"] for r in expected["rounds"]]
    assert resumed["validation"] == expected["validation"]
    assert resumed["samples"] == expected["samples"]
    a = keras.saving.load_model(reference_dir / "policy.keras")
    b = keras.saving.load_model(killed_dir / "policy.keras")
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    # The uninterrupted run really trained: the policy moved away from MLE.
    mle = keras.saving.load_model(reference_dir / "policy_mle.keras")
    assert max(np.abs(x - y).max() for x, y in zip(a.get_weights(), mle.get_weights())) > 1e-4


def test_changed_settings_are_refused_not_mixed(setup, tmp_path):
    from keras_selffb.cli import main

    output = tmp_path / "run"
    os.makedirs(output / "checkpoints")
    (output / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "epochs": 3}), encoding="utf-8")
    code = main(["train", "--config", str(setup / "config.yaml"), "--data", str(setup / "pairs.jsonl"),
                 "--output", str(output), "--epochs", "4"])
    assert code == 2
    # --resume takes the saved settings instead; --fresh starts over.
    from keras_selffb.config import TrainConfig
    from keras_selffb.run_directory import check_resumable

    check_resumable(TrainConfig.from_yaml(output / "config.yaml", output=str(output)))
    check_resumable(TrainConfig.from_dict({**CONFIG, "output": str(output), "epochs": 9}), fresh=True)
    assert not output.exists()
