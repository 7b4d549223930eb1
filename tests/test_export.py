"""`export_generator` and `keras-selffb export`: a SavedModel served by plain TensorFlow.

A tiny run directory (character tokenizer on English and Chinese lines, a
2-layer `PolicyNetwork` with seeded random weights) is exported once with the
CLI, a WordPiece policy with the Python API. One fresh interpreter that
imports only TensorFlow loads them (tensorflow_text only for WordPiece), calls
the signatures, runs `saved_model_cli show` and reports as JSON; the tests
compare that with the package's own `keras-selffb generate` and teacher-forced
scoring.
"""

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
from tensorflow.core.protobuf import saved_model_pb2

from keras_selffb.cli import main
from keras_selffb.config import TrainConfig
from keras_selffb.export import _GeneratorModule, export_generator
from keras_selffb.generator import ResponseGenerator
from keras_selffb.models import PolicyNetwork, response_token_nll
from keras_selffb.text import (
    EOS_ID,
    RESERVED_TOKENS,
    CharTokenizer,
    WordPieceTokenizer,
    pack_prompts,
    pack_responses,
    save_tokenizer,
)

LINES = [
    "hello there, how are you?",
    "i am fine, thank you.",
    "what is your name",
    "my name is bot",
    "你好，你叫什么名字？",
    "今天天气很好。",
    "我很好，谢谢你！",
]
PROMPT_LENGTH, RESPONSE_LENGTH = 16, 12
PROMPTS = [
    "hello there",  # English
    "what is your name",
    "你好",  # Chinese
    "今天天气很好吗",
    "",  # empty: [BOS] [SEP] only
    "how are you? " * 6,  # longer than 14 tokens: keeps the last ones
    "émoji 😀 and ☃",  # characters outside the vocabulary: [UNK]
]
# Replies to score: free text, a reply longer than RESPONSE_LENGTH - 1 (cut,
# no EOS), an empty reply (EOS only), unknown characters.
SCORED_REPLIES = ["i am fine", "my name is bot, thank you very much", "你好！", "今天", "", "ok 😀", "我很好"]

SERVE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    import tensorflow as tf

    char_path, wordpiece_path, prompts, scored, out_path = sys.argv[1:6]
    prompts, scored = json.loads(prompts), json.loads(scored)


    class Block(importlib.abc.MetaPathFinder):
        blocked = {"keras_selffb", "keras_hub", "tensorflow_text"}

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ImportError(f"{name} was imported while serving")


    blocker = Block()
    sys.meta_path.insert(0, blocker)
    keras_before = {m for m in sys.modules if m.split(".")[0] == "keras"}

    def strings(tensor):
        return [t.decode("utf-8") for t in tensor.numpy()]

    out = {}
    loaded = tf.saved_model.load(char_path)
    p = tf.constant(prompts)
    out["greedy_defaults"] = strings(loaded.generate(p)["replies"])
    generate = loaded.signatures["generate"]
    full = lambda n, t, s: strings(generate(
        prompts=p, max_new_tokens=tf.constant(n), temperature=tf.constant(t),
        seed=tf.constant(s, tf.int64))["replies"])
    out["greedy_signature"] = full(12, 0.0, 0)
    out["greedy_3"] = full(3, 0.0, 0)
    out["sample_a"], out["sample_a_again"], out["sample_b"] = (
        full(12, 3.0, 5), full(12, 3.0, 5), full(12, 3.0, 6))
    score = loaded.signatures["score"](prompts=p, replies=tf.constant(scored))
    out["log_likelihood"] = score["log_likelihood"].numpy().tolist()
    out["num_tokens"] = score["num_tokens"].numpy().tolist()
    out["errors"] = []
    for n, t in ((0, 0.0), (12, -1.0)):
        try:
            full(n, t, 0)
        except tf.errors.InvalidArgumentError as e:
            out["errors"].append(e.message)
    out["packages"] = [m for m in ("keras_selffb", "keras_hub", "tensorflow_text") if m in sys.modules]
    out["new_keras_modules"] = sorted(
        {m for m in sys.modules if m.split(".")[0] == "keras"} - keras_before)

    # A WordPiece export needs tensorflow_text's ops, and nothing else.
    blocker.blocked.discard("tensorflow_text")
    import tensorflow_text  # noqa: F401

    wordpiece = tf.saved_model.load(wordpiece_path)
    out["wordpiece"] = strings(wordpiece.generate(p)["replies"])
    out["packages_after_wordpiece"] = [m for m in ("keras_selffb", "keras_hub") if m in sys.modules]

    # `saved_model_cli show --dir PATH --all`, as `python -m` runs it, in this
    # interpreter: TensorFlow is imported once for both tools.
    import contextlib, io, runpy

    shown = io.StringIO()
    sys.argv = ["saved_model_cli", "show", "--dir", char_path, "--all"]
    with contextlib.redirect_stdout(shown):
        try:
            runpy.run_module("tensorflow.python.tools.saved_model_cli", run_name="__main__")
        except SystemExit as e:
            out["saved_model_cli_exit"] = e.code
    out["saved_model_cli"] = shown.getvalue()
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    """
)


def _policy(vocab_size, seed):
    keras.utils.set_random_seed(seed)
    policy = PolicyNetwork(vocab_size, embedding_dim=8, hidden_dim=16, num_layers=2)
    # Random weights rarely pick EOS; doubling its output weights makes it win
    # on some steps, so greedy replies (seed 3) end at different lengths and
    # the loop's stop at EOS is exercised.
    kernel = policy.head.kernel.numpy()
    kernel[:, EOS_ID] *= 2.0
    policy.head.kernel.assign(kernel)
    return policy


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory written with the package's own save functions."""
    run = tmp_path_factory.mktemp("run")
    tokenizer = CharTokenizer.train(LINES)
    policy = _policy(tokenizer.vocabulary_size, seed=3)
    config = TrainConfig(
        output=str(run), prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH,
        embedding_dim=8, hidden_dim=16, num_layers=2,
    )
    with open(run / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, allow_unicode=True)
    save_tokenizer(tokenizer, run)
    policy.save(run / "policy.keras")
    return run


@pytest.fixture(scope="module")
def char_export(run_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "char"
    assert main(["export", "--run", str(run_dir), "--output", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def wordpiece_export(tmp_path_factory):
    """`(path, greedy replies of ResponseGenerator)` for a WordPiece policy."""
    # A fixed vocabulary (no training, to keep the file fast): whole words,
    # and every character alone and as a suffix piece, so any text splits.
    chars = sorted(set("".join(LINES)) - {" "})
    words = ["hello", "there", "how", "are", "you", "what", "is", "your", "name", "my", "fine"]
    tokenizer = WordPieceTokenizer(list(RESERVED_TOKENS) + words + chars + ["##" + c for c in chars])
    policy = _policy(tokenizer.vocabulary_size, seed=4)
    path = tmp_path_factory.mktemp("export") / "wordpiece"
    export_generator(policy, tokenizer, path, PROMPT_LENGTH, RESPONSE_LENGTH)
    with pytest.warns(UserWarning, match="kept their last tokens"):
        replies = ResponseGenerator(policy, tokenizer, PROMPT_LENGTH, RESPONSE_LENGTH)(PROMPTS)
    return path, replies


@pytest.fixture(scope="module")
def served(char_export, wordpiece_export, tmp_path_factory):
    """What a fresh `import tensorflow`-only interpreter gets from the exports."""
    out = tmp_path_factory.mktemp("served") / "out.json"
    args = [str(char_export), str(wordpiece_export[0]), json.dumps(PROMPTS),
            json.dumps(SCORED_REPLIES), str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, *args], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


def _cli_replies(capsys, argv):
    assert main(argv) == 0
    lines = capsys.readouterr().out.split("\n")
    return lines[1 : 2 * len(PROMPTS) : 2]  # "> prompt" / "reply" pairs


def test_greedy_generate_equals_cli_generate(run_dir, served, capsys):
    with pytest.warns(UserWarning, match="kept their last tokens"):
        expected = _cli_replies(capsys, ["generate", "--run", str(run_dir), *PROMPTS])
    assert served["greedy_defaults"] == expected
    assert served["greedy_signature"] == expected
    # The fixture is not degenerate: Chinese replies, and replies stopped by EOS.
    assert any("\u4e00" <= ch <= "\u9fff" for reply in expected for ch in reply)
    assert len({len(reply) for reply in expected}) > 1
    assert min(len(reply) for reply in expected) < RESPONSE_LENGTH - 1

    with pytest.warns(UserWarning):
        short = _cli_replies(capsys, ["generate", "--run", str(run_dir), "--max-new-tokens", "3", *PROMPTS])
    assert served["greedy_3"] == short


def test_serving_imports_nothing_but_tensorflow(served):
    assert served["packages"] == []
    assert served["new_keras_modules"] == []
    assert served["packages_after_wordpiece"] == []


def test_score_equals_teacher_forced_log_likelihood(run_dir, served):
    from keras_selffb.run_directory import load_run

    policy, tokenizer, _ = load_run(str(run_dir))
    prompt_ids, _ = pack_prompts(tokenizer, PROMPTS, PROMPT_LENGTH)
    response_ids, _ = pack_responses(tokenizer, SCORED_REPLIES, RESPONSE_LENGTH)
    nll, mask, _ = response_token_nll(policy, prompt_ids, response_ids)
    np.testing.assert_allclose(served["log_likelihood"], -tf.reduce_sum(nll, axis=1).numpy(), atol=1e-4)
    assert served["num_tokens"] == tf.reduce_sum(mask, axis=1).numpy().astype(int).tolist()
    # reply + EOS, and the over-long reply cut to RESPONSE_LENGTH without EOS.
    assert served["num_tokens"][:2] == [len("i am fine") + 1, RESPONSE_LENGTH]


def test_raw_tf_lstm_step_matches_policy_logits():
    tokenizer = CharTokenizer.train(LINES)
    policy = _policy(tokenizer.vocabulary_size, seed=5)
    module = _GeneratorModule(policy, tokenizer, PROMPT_LENGTH, RESPONSE_LENGTH)
    ids, _ = pack_prompts(tokenizer, ["hello", "你好，世界", ""], PROMPT_LENGTH)
    expected = policy(ids).numpy()
    state = module._zero_state(3)
    for t in range(PROMPT_LENGTH):
        logits, state = module._step(ids[:, t], state)
        real = ids[:, t].numpy() != 0  # a padded column's logits are never used
        np.testing.assert_allclose(logits.numpy()[real], expected[real, t], atol=1e-5)
    _, cache = policy.call_with_cache(ids, policy.initial_cache(3))
    np.testing.assert_allclose(tf.transpose(state, [2, 0, 1, 3]).numpy(), cache.numpy(), atol=1e-5)


def test_seeded_sampling_is_reproducible(served):
    assert served["sample_a"] == served["sample_a_again"]
    assert served["sample_a"] != served["sample_b"]
    assert served["sample_a"] != served["greedy_signature"]


def test_invalid_inputs_are_refused_in_the_graph(served):
    assert "max_new_tokens must be >= 1" in served["errors"][0]
    assert "temperature must be >= 0" in served["errors"][1]


def test_wordpiece_export_needs_only_tensorflow_text(wordpiece_export, served):
    assert served["wordpiece"] == wordpiece_export[1]


def test_saved_model_cli_lists_both_signatures(served):
    assert served.get("saved_model_cli_exit") in (None, 0)
    shown = served["saved_model_cli"]
    assert "signature_def['generate']" in shown and "signature_def['score']" in shown
    for name in ("prompts", "max_new_tokens", "temperature", "seed", "replies", "log_likelihood",
                 "num_tokens"):
        assert f"['{name}']" in shown, name


def test_signature_defaults_let_clients_send_prompts_only(char_export):
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((char_export / "saved_model.pb").read_bytes())
    defaults = saved.meta_graphs[0].signature_def["generate"].defaults
    values = {name: tf.make_ndarray(proto).item() for name, proto in defaults.items()}
    # The run's response_length, greedy, seed 0: what TF Serving fills in.
    assert values == {"max_new_tokens": RESPONSE_LENGTH, "temperature": 0.0, "seed": 0}


def test_cli_export_errors_are_one_clear_line(run_dir, char_export, tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        return lines[0]

    assert "Run directory not found" in error(["export", "--run", str(tmp_path / "nope"),
                                               "--output", str(tmp_path / "out")])
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in error(["export", "--run", str(run_dir), "--output", str(a_file)])
    assert "--overwrite" in error(["export", "--run", str(run_dir), "--output", str(char_export)])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    assert "holds no SavedModel" in error(["export", "--run", str(run_dir), "--output",
                                           str(tmp_path / "other"), "--overwrite"])
    assert (tmp_path / "other" / "notes.txt").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tokenizer": object()}, "Unknown tokenizer type"),
        ({"tokenizer": CharTokenizer.train(["ab"])}, "Vocabulary mismatch"),
        ({"prompt_length": 2}, "prompt_length must be >= 3"),
        ({"max_new_tokens": 1}, "max_new_tokens must be >= 2"),
    ],
)
def test_export_generator_argument_errors(tmp_path, change, message):
    tokenizer = CharTokenizer.train(LINES)
    arguments = {
        "policy": PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=4, hidden_dim=4),
        "tokenizer": tokenizer,
        "path": tmp_path / "out",
        "prompt_length": PROMPT_LENGTH,
        "max_new_tokens": RESPONSE_LENGTH,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        export_generator(**arguments)
    assert not (tmp_path / "out").exists()
