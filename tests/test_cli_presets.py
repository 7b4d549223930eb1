"""`keras-selffb train --preset DIR` end to end: a pretrained keras-hub preset with its own tokenizer.

A tiny random GPT-2 (byte-level BPE) and, when sentencepiece is installed,
Llama (SentencePiece) are written with `save_to_preset`, as a user's
downloaded preset would be. Each goes through the whole pipeline (MLE, one
RL round, the report), then `generate` and `export`; a fresh interpreter
that imports TensorFlow and tensorflow_text only (keras_selffb and
keras_hub blocked) serves the exports.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras_hub
import numpy as np
import pytest
import yaml

from keras_selffb.cli import main, printable
from keras_selffb.generator import ResponseGenerator
from keras_selffb.run_directory import load_run
from keras_selffb.text import PresetTokenizer

from conftest import CLI_PAIRS
from test_presets import sentencepiece, write_preset

TINY = {
    "batch_size": 8, "learning_rate": 0.01, "prompt_length": 16, "response_length": 12, "num_samples": 2,
    "epochs": 2, "rl_steps": 2, "rl_batch_size": 4, "rl_samples": 2, "rl_learning_rate": 1e-3,
    "feedback_rounds": 1,
}
PROMPTS = ["hello 3", "你好 5", "café?"]
KINDS = ["gpt2", pytest.param("llama", marks=pytest.mark.skipif(sentencepiece is None, reason="no sentencepiece"))]


def _train(directory, kind, *flags, settings=None):
    """Writes the preset, the data and the config into `directory`, runs `train`; returns `(preset, run)`."""
    preset = directory / f"{kind}_preset"
    write_preset(kind, preset)
    data = directory / "pairs.jsonl"
    data.write_text("\n".join(
        json.dumps({"prompt": f"{p} {i}", "response": r}, ensure_ascii=False) for i in range(12) for p, r in CLI_PAIRS
    ), encoding="utf-8")
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, **(settings or {})}))
    run = directory / "run"
    argv = ["train", "--config", str(config), "--data", str(data), "--output", str(run), "--seed", "3",
            "--preset", str(preset), *flags]
    assert main(argv) == 0
    return preset, run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{kind: (preset, run)}`: GPT-2 with LoRA rank 4 and the relevance judge, Llama fully fine-tuned."""
    out = {"gpt2": _train(tmp_path_factory.mktemp("gpt2"), "gpt2", "--lora-rank", "4")}
    if sentencepiece is not None:
        # No relevance judge here: the GPT-2 run trains one on a preset's tokens already.
        out["llama"] = _train(tmp_path_factory.mktemp("llama"), "llama", settings={"judge_epochs": 0,
                                                                                  "reward_judge": 0.0})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_preset_run_uses_the_presets_model_and_tokenizer(kind, runs):
    preset, run = runs[kind]
    for name in ("tokenizer.json", "tokenizer_preset", "policy.keras", "policy_mle.keras", "metrics.json",
                 "rounds.png"):
        assert (run / name).exists(), name
    report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    model = report["model"]
    hub = keras_hub.models.CausalLM.from_preset(str(preset), preprocessor=None)
    assert model["kind"] == "preset" and model["preset"] == str(preset)
    assert model["class"] == type(hub).__name__
    policy, tokenizer, config = load_run(str(run))
    assert isinstance(tokenizer, PresetTokenizer) and config.preset == str(preset)
    # The run's ids are the preset's own, shifted past our 5 reserved ids.
    hub_tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(str(preset))
    ours = tokenizer.tokenize(["the cat", "你好"]).to_list()
    rows = hub_tokenizer.tokenize(["the cat", "你好"])  # eager keras-hub: lists, or a ragged tensor
    theirs = [[int(t) + 5 for t in row] for row in (rows.to_list() if hasattr(rows, "to_list") else rows)]
    assert ours == theirs
    assert report["vocabulary_size"] == hub.backbone.vocabulary_size + 5
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert all(np.isfinite(r["metrics"]["val_perplexity"]) for r in report["rounds"])


@pytest.mark.slow
def test_preset_lora_trains_only_the_query_value_kernels_from_the_preset(runs):
    """--lora-rank with a preset: LoRA from MLE on; every other weight stays the preset's, bit for bit."""
    preset, run = runs["gpt2"]
    report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    model = report["model"]
    assert model["lora_rank"] == 4 and 0 < model["trainable_parameters"] < model["parameters"] / 4
    hub = keras_hub.models.CausalLM.from_preset(str(preset), preprocessor=None)
    before = {v.path: np.asarray(v) for v in hub.backbone.weights}
    policy, _, _ = load_run(str(run))  # `.keras` stores each LoRA layer's kernel merged
    changed = []
    for variable in policy.backbone.weights:
        if "lora" in variable.path:
            continue
        path = variable.path.split("/", 1)[1] if variable.path not in before else variable.path
        old = before.get(variable.path, before.get(path))
        assert old is not None, variable.path
        if not np.array_equal(np.asarray(variable), old):
            changed.append(variable.path)
    assert changed and all(("query" in p or "value" in p) and "kernel" in p for p in changed), changed


SERVE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("keras_selffb", "keras_hub"):
                raise ImportError(f"{name} was imported while serving")
    sys.meta_path.insert(0, Block())
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 - the preset tokenizers' ops
    prompts = tf.constant(json.loads(sys.argv[2]))
    out = {}
    for kind, path in json.loads(sys.argv[1]).items():
        loaded = tf.saved_model.load(path)  # held: a dropped object's variables are freed
        replies = loaded.generate(prompts)["replies"]
        out[kind] = [r.decode("utf-8") for r in replies.numpy()]
    print(json.dumps(out, ensure_ascii=False))
    """
)


@pytest.fixture(scope="module")
def served(runs, tmp_path_factory):
    """`keras-selffb export` of every run, and the greedy replies one fresh interpreter serves from them."""
    out = tmp_path_factory.mktemp("exports")
    paths = {}
    for kind, (_, run) in runs.items():
        paths[kind] = str(out / kind)
        assert main(["export", "--run", str(run), "--output", paths[kind]]) == 0
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, json.dumps(paths), json.dumps(PROMPTS)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_generate_and_export_serve_a_preset_run(kind, runs, served, capsys):
    _, run = runs[kind]
    capsys.readouterr()
    assert main(["generate", "--run", str(run), *PROMPTS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0::2] == [f"> {printable(p)}" for p in PROMPTS]
    policy, tokenizer, config = load_run(str(run))
    replies = ResponseGenerator(policy, tokenizer, config.prompt_length, config.response_length)(PROMPTS)
    assert lines[1::2] == [printable(r) for r in replies]
    assert served[kind] == replies


@pytest.mark.parametrize("settings, message", [
    ({"preset": "x", "model": "gpt2"}, "'preset' and 'model' exclude each other"),
    ({"preset": "x", "tokenizer": "wordpiece"}, "brings the preset's own tokenizer"),
    ({"preset": " "}, "empty string"),
])
def test_preset_settings_are_checked(settings, message):
    from keras_selffb.config import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(settings)


def test_a_missing_preset_is_one_line(tmp_path, capsys):
    assert main(["train", "--preset", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_preset_too_short_for_the_lengths_is_one_line(runs, tmp_path, capsys):
    preset, _ = runs["gpt2"]  # 32 positions
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, "prompt_length": 24, "response_length": 12}))
    argv = ["train", "--config", str(config), "--preset", str(preset), "--output", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "has 32 positions, fewer than prompt_length + response_length = 36" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written
