"""`keras-selffb train --model gpt2|llama` (and `--lora-rank`) end to end on tiny settings.

Each run (GPT-2 fully fine-tuned, Llama with LoRA rank 4) goes through the
whole pipeline (MLE, one self-feedback round of RL, the report, the
plots), then `generate` and `export` on its run
directory. One fresh interpreter that imports only TensorFlow loads the
GPT-2 and Llama exports and calls their signatures; the tests compare its
greedy replies with what `keras-selffb generate` prints, and its scores with
the package's teacher-forced scoring.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import CLI_PAIRS
from keras_selffb.cli import main, printable
from keras_selffb.models import response_token_nll
from keras_selffb.run_directory import load_run
from keras_selffb.text import pack_prompts, pack_responses

# Tiny transformers: 2 blocks of width 16 with 2 heads (a few thousand weights).
TINY = {
    "hidden_dim": 16, "num_layers": 2, "num_heads": 2, "batch_size": 8, "learning_rate": 0.01,
    "prompt_length": 24, "response_length": 12, "num_samples": 2, "epochs": 2,
    "rl_steps": 2, "rl_batch_size": 4, "rl_samples": 2, "rl_learning_rate": 1e-3, "feedback_rounds": 1,
    "feedback_keep_best": False, "feedback_min_distinct": 0.0,  # the final policy is the last round's
    "judge_epochs": 0, "reward_judge": 0.0,  # the judge is tested with the LSTM (tests/test_cli.py)
}
LORA_RANK = {"gpt2": 0, "llama": 4}  # `--lora-rank` of the module's two runs
PROMPTS = ["hello 3", "你好 5", "what is your name", ""]
SCORED = ["hi there", "你好！", "i am a bot, a bot, a bot, a bot", ""]


def _write_data(path):
    lines = [
        json.dumps({"prompt": f"{prompt} {i}", "response": response}, ensure_ascii=False)
        for i in range(12)
        for prompt, response in CLI_PAIRS
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _train(directory, *flags, settings=None):
    """Runs `keras-selffb train` on the tiny data in `directory`; returns `(run, stdout)`."""
    data = _write_data(directory / "pairs.jsonl")
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, **(settings or {})}))
    run = directory / "run"
    argv = ["train", "--config", str(config), "--data", str(data), "--output", str(run), "--seed", "3", *flags]
    return run, argv


def _generate(run, capsys, *flags):
    """Greedy replies that `keras-selffb generate` prints for `PROMPTS`, one line each."""
    assert main(["generate", "--run", str(run), *flags, *PROMPTS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0::2] == [f"> {printable(p)}" for p in PROMPTS]
    return lines[1::2]


def _trained(tmp_path_factory, name, *flags, settings=None):
    """A finished run; what `train` printed is kept beside it (`train.out`), with its argv (`argv.json`)."""
    directory = tmp_path_factory.mktemp(name)
    run, argv = _train(directory, *flags, settings=settings)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    (directory / "train.out").write_text(printed.getvalue(), encoding="utf-8")
    (directory / "argv.json").write_text(json.dumps(argv), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    return _trained(tmp_path_factory, "gpt2", "--model", "gpt2")


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    """Llama with LoRA rank 4 (GPT-2 is fully fine-tuned; tests/test_cli_presets.py has the opposite pair)."""
    return _trained(tmp_path_factory, "llama", "--model", "llama", "--lora-rank", "4")


@pytest.fixture(scope="module")
def exports(gpt2_run, llama_run, tmp_path_factory):
    """`keras-selffb export` of both runs: `{kind: path}`."""
    out = tmp_path_factory.mktemp("exports")
    paths = {}
    for kind, run in (("gpt2", gpt2_run), ("llama", llama_run)):
        paths[kind] = out / kind
        assert main(["export", "--run", str(run), "--output", str(paths[kind])]) == 0
    return paths


SERVE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    import tensorflow as tf

    paths, prompts, scored, out_path = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]


    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("keras_selffb", "keras_hub", "keras", "tensorflow_text"):
                raise ImportError(f"{name} was imported while serving")


    sys.meta_path.insert(0, Block())
    before = set(sys.modules)  # importing TensorFlow may have imported keras itself
    strings = lambda tensor: [t.decode("utf-8") for t in tensor.numpy()]
    out = {}
    p = tf.constant(prompts)
    for kind, path in paths.items():
        loaded = tf.saved_model.load(path)
        generate = loaded.signatures["generate"]
        full = lambda n, t, s: strings(generate(
            prompts=p, max_new_tokens=tf.constant(n), temperature=tf.constant(t),
            seed=tf.constant(s, tf.int64))["replies"])
        score = loaded.signatures["score"](prompts=p, replies=tf.constant(scored))
        errors = []
        for n in (0, 13):
            try:
                full(n, 0.0, 0)
            except tf.errors.InvalidArgumentError as e:
                errors.append(e.message)
        out[kind] = {
            "signatures": sorted(loaded.signatures),
            "greedy": strings(loaded.generate(p)["replies"]),
            "greedy_3": full(3, 0.0, 0),
            "sample_a": full(12, 2.0, 5), "sample_a_again": full(12, 2.0, 5), "sample_b": full(12, 2.0, 6),
            "log_likelihood": score["log_likelihood"].numpy().tolist(),
            "num_tokens": score["num_tokens"].numpy().tolist(),
            "errors": errors,
        }
    out["packages"] = sorted({m.split(".")[0] for m in sys.modules} & {"keras_selffb", "keras_hub"})
    out["new_keras_modules"] = sorted(m for m in set(sys.modules) - before if m.split(".")[0] == "keras")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    """
)


@pytest.fixture(scope="module")
def served(exports, tmp_path_factory):
    """What a fresh interpreter that imports only TensorFlow gets from the exports."""
    out = tmp_path_factory.mktemp("served") / "out.json"
    paths = json.dumps({kind: str(path) for kind, path in exports.items()})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, paths, json.dumps(PROMPTS), json.dumps(SCORED), str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


def _metrics(run):
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_transformer_run_goes_through_the_whole_pipeline(kind, gpt2_run, llama_run):
    run = {"gpt2": gpt2_run, "llama": llama_run}[kind]
    for name in ("tokenizer.json", "policy.keras", "policy_mle.keras", "config.yaml", "metrics.json",
                 "history.csv", "curves.png", "rl_history.csv", "rounds.png"):
        assert (run / name).exists(), name
    report = _metrics(run)
    model = report["model"]
    assert model["kind"] == kind and model["lora_rank"] == LORA_RANK[kind]
    if LORA_RANK[kind]:
        assert 0 < model["trainable_parameters"] < model["parameters"] / 4
    else:
        assert model["parameters"] == model["trainable_parameters"] > 1000
    policy, tokenizer, config = load_run(str(run))
    assert type(policy).__name__ == "CausalLMPolicy" and config.model == kind
    assert policy.count_params() == model["parameters"]
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert report["rounds"][1]["rl"]["steps"] == 2
    assert np.isfinite(report["mle"]["validation_perplexity"])
    for stage in ("mle", "round 1"):
        assert 0.0 <= report["validation"][stage]["rouge_l"] <= 1.0
    assert len(report["samples"]) == 2


@pytest.mark.slow
def test_report_names_the_model_and_a_changed_model_is_refused(gpt2_run, capsys):
    run = gpt2_run
    argv = json.loads((run.parent / "argv.json").read_text(encoding="utf-8"))
    assert argv[-2:] == ["--model", "gpt2"]
    out = (run.parent / "train.out").read_text(encoding="utf-8")
    parameters = _metrics(run)["model"]["parameters"]
    assert f"model: gpt2, {parameters:,} parameters" in out
    # Model settings are not resume-free: the run refuses another model, changing nothing.
    before = sorted(os.listdir(run))
    for flags, change in ((["--model", "llama"], "model: 'gpt2' -> 'llama'"),
                          (["--model", "gpt2", "--lora-rank", "2"], "lora_rank: 0 -> 2")):
        assert main(argv[:-2] + flags) == 2
        err = capsys.readouterr().err
        assert change in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(run)) == before
    assert main(["train", "--resume", "--output", str(run), "--model", "llama"]) == 2
    assert "--model llama differs from the saved model: 'gpt2'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_generate_and_plain_tensorflow_export_agree(kind, gpt2_run, llama_run, served, capsys):
    run = {"gpt2": gpt2_run, "llama": llama_run}[kind]
    result = served[kind]
    # Loaded and ran without keras_hub or keras_selffb, and imported no Keras module.
    assert served["packages"] == [] and served["new_keras_modules"] == []
    assert result["signatures"] == ["generate", "score"]
    # Greedy: the same replies as `keras-selffb generate`, at the default and a shorter length.
    assert [printable(r) for r in result["greedy"]] == _generate(run, capsys)
    assert [printable(r) for r in result["greedy_3"]] == _generate(run, capsys, "--max-new-tokens", "3")
    assert result["sample_a"] == result["sample_a_again"]
    assert result["sample_a"] != result["sample_b"]
    assert any("max_new_tokens must be >= 1" in e for e in result["errors"])
    assert any("max_new_tokens must be <= 12" in e for e in result["errors"])
    # score: the teacher-forced log-likelihood of reply + EOS, as the package computes it.
    policy, tokenizer, config = load_run(str(run))
    prompt_ids, _ = pack_prompts(tokenizer, PROMPTS, config.prompt_length)
    response_ids, _ = pack_responses(tokenizer, SCORED, config.response_length)
    nll, mask, _ = response_token_nll(policy, prompt_ids, response_ids)
    np.testing.assert_allclose(result["log_likelihood"], -np.sum(nll, axis=1), rtol=1e-4, atol=1e-4)
    assert result["num_tokens"] == np.sum(mask, axis=1).astype(int).tolist()


def _variables(path):
    """`{variable path: value}` of a saved policy."""
    policy = keras.saving.load_model(path)
    return {v.path: np.asarray(v.numpy()) for v in policy.variables}, policy


@pytest.mark.slow
def test_lora_run_trains_only_the_lora_weights(llama_run):
    run = llama_run
    model = _metrics(run)["model"]
    assert model["kind"] == "llama" and model["lora_rank"] == 4
    assert 0 < model["trainable_parameters"] < model["parameters"] / 4
    mle, _ = _variables(run / "policy_mle.keras")
    final, policy = _variables(run / "policy.keras")
    lora_layers = {
        v.path.rsplit("/", 1)[0] for v in policy.variables if "lora_kernel" in v.path
    }
    assert lora_layers  # LoRA was on when the final policy was saved
    changed = []
    for name, value in mle.items():
        if name.rsplit("/", 1)[0] in lora_layers and name.endswith("/kernel"):
            # Keras saves a LoRA layer's kernel with the LoRA update merged in:
            # what changed there is a product of rank <= 4 (A: kernel.shape[:-1]
            # + (rank,), B: (rank, kernel.shape[-1])).
            delta = (final[name] - value).reshape(-1, value.shape[-1])
            if np.any(delta):
                changed.append(name)
                assert np.linalg.matrix_rank(delta, tol=1e-5) <= 4, name
        else:
            np.testing.assert_array_equal(final[name], value, err_msg=name)  # bit-identical
    assert changed  # the rounds did train the LoRA weights


def test_lora_on_the_lstm_is_refused_in_one_line(tmp_path, capsys):
    run, argv = _train(tmp_path, "--model", "lstm", "--lora-rank", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "'lora_rank' must be 0 for model 'lstm'" in err
    assert not run.exists()
