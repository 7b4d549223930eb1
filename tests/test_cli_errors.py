"""`keras-selffb generate` / `export` and `load_run`: bad input ends in one clear line.

Every bad argument, output location or damaged run file must end in exit
code 2 with exactly one line on stderr naming the problem (no traceback, no
TensorFlow graph dump), and text from the data is printed with its control
characters escaped. The run directory is written once with the package's
own save functions (no training): a character tokenizer on the CLI pairs
plus an ESC character, and a tiny policy whose greedy reply is ESC repeated
(EOS is never chosen), so replies are never empty and hold a control byte.
"""

import errno
import math
import os
import shutil

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
import yaml

from conftest import CLI_PAIRS
from keras_selffb import export as export_module
from keras_selffb.cli import format_report, main, printable
from keras_selffb.config import TrainConfig
from keras_selffb.generator import ResponseGenerator
from keras_selffb.models import PolicyNetwork, get_sampler
from keras_selffb.text import EOS_ID, CharTokenizer, save_tokenizer

PROMPT_LENGTH, RESPONSE_LENGTH = 12, 4
ESC = "\x1b"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory: config.yaml, tokenizer.json and policy.keras."""
    run = tmp_path_factory.mktemp("run") / "run"
    run.mkdir()
    tokenizer = CharTokenizer.train([text for pair in CLI_PAIRS for text in pair] + [ESC])
    keras.utils.set_random_seed(5)
    policy = PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=8, hidden_dim=8)
    policy(np.zeros((1, 2), "int32"))
    bias = policy.head.bias.numpy()
    bias[EOS_ID] = -100.0
    bias[tokenizer.vocabulary.index(ESC)] = 50.0
    policy.head.bias.assign(bias)
    config = TrainConfig(output=str(run), prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH,
                         embedding_dim=8, hidden_dim=8)
    with open(run / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(config.to_dict(), f, allow_unicode=True)
    save_tokenizer(tokenizer, run)
    policy.save(run / "policy.keras")
    return run


@pytest.fixture
def damaged(run_dir, tmp_path):
    """A private copy of the run to damage."""
    return shutil.copytree(run_dir, tmp_path / "run")


def cli(capsys, *argv):
    """`(exit code, stdout, stderr)` of `keras-selffb *argv`, run in this process."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *names):
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert "Traceback" not in err and "{{node" not in err
    for name in names:
        assert str(name) in err, (name, err)


# --- generate: sampler and length arguments ----------------------------------------------

GENERATE_ERRORS = [
    (["--sampler", "top_k", "--top-k", "0"], ["k (--top-k) must be an integer >= 1", "got 0"]),
    (["--sampler", "top_k", "--top-k", "-3"], ["k (--top-k) must be an integer >= 1", "got -3"]),
    (["--sampler", "beam", "--num-beams", "0"], ["num_beams (--num-beams) must be an integer >= 1"]),
    (["--sampler", "top_p", "--top-p", "0"], ["p (--top-p) must be a number with 0 < p <= 1", "got 0.0"]),
    (["--sampler", "top_p", "--top-p", "1.5"], ["0 < p <= 1", "got 1.5"]),
    (["--sampler", "random", "--temperature", "-1"], ["temperature (--temperature) must be", ">= 0"]),
    (["--temperature", "-1"], ["temperature (--temperature) must be"]),  # greedy: argmin otherwise
    (["--sampler", "random", "--temperature", "nan"], ["temperature", "finite", "got nan"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens must be >= 1; got 0"]),
    (["--max-new-tokens", "-2"], ["--max-new-tokens must be >= 1; got -2"]),
]


@pytest.mark.parametrize("args,names", GENERATE_ERRORS)
def test_generate_bad_argument_is_one_line(run_dir, capsys, args, names):
    code, out, err = cli(capsys, "generate", "--run", run_dir, *args, "hello")
    assert_one_line_error(code, err, *names)
    assert out == ""


@pytest.mark.parametrize("args,names", GENERATE_ERRORS[:2] + GENERATE_ERRORS[-2:])
def test_generate_arguments_are_checked_before_the_run_is_loaded(tmp_path, capsys, args, names):
    # The run directory does not exist: the argument error still comes first.
    code, _, err = cli(capsys, "generate", "--run", tmp_path / "missing", *args, "hello")
    assert_one_line_error(code, err, *names)


def test_top_k_larger_than_the_vocabulary_is_one_line(run_dir, capsys):
    code, _, err = cli(capsys, "generate", "--run", run_dir, "--sampler", "top_k", "--top-k", "100000", "hi")
    assert_one_line_error(code, err, "k (--top-k) = 100000 is more than the vocabulary")


def test_prompt_that_is_not_utf8_is_one_line(run_dir, capsys):
    # What Python makes of an argv byte the locale cannot decode.
    code, _, err = cli(capsys, "generate", "--run", run_dir, "caf\udce9")
    assert_one_line_error(code, err, "not valid UTF-8", "caf\\udce9")


@pytest.mark.parametrize("sampler", [["--sampler", "random"], ["--sampler", "top_k", "--top-k", "3"],
                                     ["--sampler", "top_p"], ["--sampler", "beam"], []])
def test_temperature_zero_is_greedy_decoding(run_dir, capsys, sampler):
    prompts = ["hello", "你好"]
    code, greedy, _ = cli(capsys, "generate", "--run", run_dir, *prompts)
    assert code == 0
    code, out, err = cli(capsys, "generate", "--run", run_dir, *sampler, "--temperature", "0", *prompts)
    assert code == 0 and err == ""
    assert out == greedy
    replies = out.splitlines()[1::2]
    assert replies == ["\\x1b" * RESPONSE_LENGTH] * 2  # not empty, as it was before


def test_max_new_tokens_given_is_used(run_dir, capsys):
    code, out, _ = cli(capsys, "generate", "--run", run_dir, "--max-new-tokens", "2", "hello")
    assert code == 0 and out.splitlines()[1] == "\\x1b" * 2


# --- the same checks for library users ---------------------------------------------------

@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("top_k", {"k": 0}, r"top_k sampler: k \(--top-k\) must be an integer >= 1; got 0"),
        ("top_k", {"k": 2.5}, "must be an integer"),
        ("top_k", {"k": True}, "must be an integer"),
        ("top_p", {"p": 0.0}, "0 < p <= 1"),
        ("top_p", {"p": 1.01}, "0 < p <= 1"),
        ("top_p", {"p": 0.5, "k": 0}, "k must be an integer >= 1 or None"),
        ("beam", {"num_beams": 0}, "num_beams"),
        ("random", {"temperature": -0.5}, "temperature"),
        ("random", {"temperature": math.inf}, "temperature"),
        ("greedy", {"k": 3}, r"greedy sampler: unknown argument\(s\) \['k'\]"),
    ],
)
def test_get_sampler_refuses_bad_arguments(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(name, **kwargs)


def test_sampler_checks_in_response_generator(run_dir):
    from keras_selffb.run_directory import load_run

    policy, tokenizer, _ = load_run(run_dir)
    vocab = tokenizer.vocabulary_size
    with pytest.raises(ValueError, match="must be an integer >= 1; got 0"):
        ResponseGenerator(policy, tokenizer, PROMPT_LENGTH, 4, "top_k", k=0)
    with pytest.raises(ValueError, match=f"more than the vocabulary \\({vocab} tokens\\)"):
        ResponseGenerator(policy, tokenizer, PROMPT_LENGTH, 4, "top_k", k=vocab + 1)
    with pytest.raises(ValueError, match="more than the vocabulary"):
        ResponseGenerator(policy, tokenizer, PROMPT_LENGTH, 4, "top_p", p=0.5, k=vocab + 1)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1; got 0"):
        ResponseGenerator(policy, tokenizer, PROMPT_LENGTH, 0)
    # Sampler instances are checked too.
    with pytest.raises(ValueError, match="k .* must be an integer >= 1; got 0"):
        ResponseGenerator(policy, tokenizer, PROMPT_LENGTH, 4, keras_hub.samplers.TopKSampler(k=0))
    with pytest.raises(ValueError, match="temperature 0"):
        ResponseGenerator(policy, tokenizer, PROMPT_LENGTH, 4, keras_hub.samplers.RandomSampler(temperature=0.0))
    # k equal to the vocabulary is allowed; temperature 0 is greedy decoding.
    ResponseGenerator(policy, tokenizer, PROMPT_LENGTH, 4, "top_k", k=vocab)
    for name in ("top_k", "top_p", "random", "beam", "greedy"):
        sampler = ResponseGenerator(policy, tokenizer, PROMPT_LENGTH, 4, name, temperature=0).sampler
        assert type(sampler) is keras_hub.samplers.GreedySampler


# --- export: output location and lengths -------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1", "1"])
def test_export_max_new_tokens_below_two_is_one_line(run_dir, tmp_path, capsys, value):
    code, _, err = cli(capsys, "export", "--run", run_dir, "--output", tmp_path / "out", "--max-new-tokens", value)
    assert_one_line_error(code, err, "--max-new-tokens must be >= 2 for an export", f"got {value}")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_export_to_proc_is_one_line(run_dir, capsys):
    code, _, err = cli(capsys, "export", "--run", run_dir, "--output", "/proc/x")
    assert_one_line_error(code, err, "Cannot write the SavedModel to /proc/x", "cannot create a directory in /proc")


def test_export_below_a_file_is_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a directory")
    code, _, err = cli(capsys, "export", "--run", run_dir, "--output", tmp_path / "afile" / "x")
    assert_one_line_error(code, err, f"{tmp_path / 'afile'} is a file, not a directory")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_export_to_an_unwritable_directory_is_one_line(run_dir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = cli(capsys, "export", "--run", run_dir, "--output", locked / "model")
    finally:
        locked.chmod(0o700)
    assert_one_line_error(code, err, f"Cannot write the SavedModel to {locked / 'model'}", "Permission denied")


def test_export_output_is_checked_before_the_run_is_loaded(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    code, _, err = cli(capsys, "export", "--run", tmp_path / "missing", "--output", tmp_path / "afile" / "x")
    assert_one_line_error(code, err, "is a file, not a directory")


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"),
     tf.errors.ResourceExhaustedError(None, None, "model/variables: No space left on device\n\tmore detail")],
)
def test_export_write_failure_is_one_line_and_leaves_nothing(run_dir, tmp_path, capsys, monkeypatch, error):
    def failing_save(module, path, signatures=None):
        os.makedirs(os.path.join(path, "variables"))
        raise error

    monkeypatch.setattr(export_module.tf.saved_model, "save", failing_save)
    out = tmp_path / "model"
    code, _, err = cli(capsys, "export", "--run", run_dir, "--output", out)
    assert_one_line_error(code, err, f"Could not write the SavedModel to {out}", "No space left on device")
    assert not out.exists()  # no half-written SavedModel blocks the next try
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "export", "--run", run_dir, "--output", empty)
    assert_one_line_error(code, err, "No space left on device")
    assert empty.is_dir() and not os.listdir(empty)


def test_output_path_error_is_an_oserror_and_a_valueerror(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(export_module.OutputPathError) as info:
        export_module.check_output_path(tmp_path / "afile" / "x")
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)
    # A new path under an existing directory is fine, and nothing is created.
    assert export_module.check_output_path(tmp_path / "new" / "model") == str(tmp_path / "new" / "model")
    assert sorted(os.listdir(tmp_path)) == ["afile"]


# --- load_run: damaged run files ---------------------------------------------------------

def _overwrite_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "damage,names",
    [
        (lambda run: _overwrite_middle(run / "policy.keras"), ["policy.keras is corrupt or truncated", "CRC"]),
        (lambda run: _truncate(run / "policy.keras"), ["policy.keras is corrupt or truncated", "retrain with"]),
        (lambda run: (run / "policy.keras").write_bytes(b""), ["policy.keras is corrupt or truncated"]),
        (lambda run: (run / "config.yaml").unlink(), ["has no config.yaml"]),
        (lambda run: (run / "config.yaml").write_text("a: [unclosed\n  b: 'x"), ["config.yaml", "not valid YAML"]),
        (lambda run: (run / "config.yaml").write_text("- a list\n"), ["config.yaml", "mapping"]),
        (lambda run: (run / "tokenizer.json").unlink(), ["has no tokenizer.json"]),
        (lambda run: _truncate(run / "tokenizer.json"), ["tokenizer.json", "not a valid tokenizer file"]),
        (lambda run: (run / "tokenizer.json").write_text("[1, 2]"), ["tokenizer.json", "not a valid tokenizer file: expected a JSON object"]),
        (lambda run: save_tokenizer(CharTokenizer.train(["ab"]), run), ["the files come from different runs"]),
    ],
    ids=["policy-overwritten", "policy-truncated", "policy-empty", "config-missing", "config-bad-yaml",
         "config-not-mapping", "tokenizer-missing", "tokenizer-truncated", "tokenizer-not-object",
         "vocabulary-mismatch"],
)
def test_damaged_run_is_one_line(damaged, capsys, damage, names):
    damage(damaged)
    code, out, err = cli(capsys, "generate", "--run", damaged, "hello")
    assert_one_line_error(code, err, *names)
    assert out == ""
    code, _, err = cli(capsys, "export", "--run", damaged, "--output", damaged.parent / "export")
    assert_one_line_error(code, err, *names)


# --- control characters in printed text --------------------------------------------------

def test_printable_escapes_control_characters_only():
    for text in ["你好，世界！", "café crème, naïve", "emoji 😀 ☃", "Ünïcödé ß", "a\\x1b stays", ""]:
        assert printable(text) == text
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert printable("bell\x07 null\x00 del\x7f csi\x9b") == "bell\\x07 null\\x00 del\\x7f csi\\x9b"
    assert printable("line one\nline two\tcol\rback") == "line one\\nline two\\tcol\\rback"
    assert printable("sep\u2028rtl\u202eend") == "sep\\u2028rtl\\u202eend"
    assert printable("你好\x1b[2J") == "你好\\x1b[2J"
    assert printable("lone \udcff") == "lone \\udcff"


def test_format_report_escapes_samples():
    report = {
        "mle": {"epochs": 1, "seconds": 1.0},
        "vocabulary_size": 10,
        "validation": {"mle": {"rouge_l": 0.5, "bleu": 1.0, "perplexity": 3.0}},
        "samples": [{"prompt": "hi\x1b[31m", "reply": "你好\x07\tyes\r", "reference": "oui\ncafé"}],
    }
    text = format_report(report, "runs/x")
    assert "> hi\\x1b[31m" in text
    assert "reply:     你好\\x07\\tyes\\r" in text
    assert "reference: oui\\ncafé" in text
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\t" not in text


def test_generate_prints_prompts_and_replies_escaped(run_dir, capsys):
    code, out, err = cli(capsys, "generate", "--run", run_dir, "\x1b[31mred\x07", "tab\there", "你好 café")
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "> \\x1b[31mred\\x07", "\\x1b" * RESPONSE_LENGTH,
        "> tab\\there", "\\x1b" * RESPONSE_LENGTH,
        "> 你好 café", "\\x1b" * RESPONSE_LENGTH,
    ]
    assert "\x1b" not in out and "\x07" not in out and "\t" not in out
