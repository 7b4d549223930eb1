"""`keras-selffb train` never loses work: bad inputs and faults end in one line.

`--fresh` deletes only a keras-selffb run (a directory holding the
`.keras-selffb-run` marker), after everything is validated; a rerun on
changed data or settings is refused before any file of the run changes;
OS errors (unwritable output, read-only file system, full disk) end in one
line; the command starts without TensorFlow's C++ log lines.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import CLI_PAIRS
from keras_selffb import cli, pipeline, run_directory
from keras_selffb.cli import main
from keras_selffb.config import TrainConfig
from keras_selffb.run_directory import RUN_MARKER, check_resumable

TINY = {"embedding_dim": 8, "hidden_dim": 16, "batch_size": 8, "learning_rate": 0.01,
        "prompt_length": 24, "response_length": 16, "num_samples": 1, "epochs": 1,
        "feedback_rounds": 0}


def write_data(path, extra=""):
    lines = [json.dumps({"prompt": f"{p} {i}", "response": r}, ensure_ascii=False)
             for i in range(6) for p, r in CLI_PAIRS]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def tree_hash(directory):
    """One sha256 over every file's relative path and bytes (directories included)."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(directory)):
        dirs.sort()
        digest.update(os.path.relpath(root, directory).encode())
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(name.encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def train_argv(output, *extra):
    """`train` with tiny.yaml and pairs.jsonl of the current directory (relative
    paths: a copy of the directory is the same run)."""
    return ["train", "--config", "tiny.yaml", "--data", "pairs.jsonl", "--output", str(output), *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run (MLE only), `run/`, next to its data and config."""
    root = tmp_path_factory.mktemp("finished")
    write_data(root / "pairs.jsonl")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(train_argv("run")) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def run_copy(finished, tmp_path, monkeypatch):
    """A private copy of the finished run, its data and config in `tmp_path`, the current directory."""
    shutil.copytree(finished / "run", tmp_path / "run")
    shutil.copy(finished / "pairs.jsonl", tmp_path / "pairs.jsonl")
    shutil.copy(finished / "tiny.yaml", tmp_path / "tiny.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("keras-selffb train: error: "), err
    return lines[0]


def test_a_finished_run_holds_the_marker_with_the_data_fingerprint(finished):
    marker = json.loads((finished / "run" / RUN_MARKER).read_text(encoding="utf-8"))
    data = (finished / "pairs.jsonl").read_bytes()
    assert marker["data"]["size"] == len(data)
    assert marker["data"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_fresh_and_new_runs_refuse_a_directory_that_is_not_a_run(run_copy, capsys):
    root = run_copy
    other = root / "u"
    other.mkdir()
    (other / "notes.txt").write_text("hi")
    assert main(train_argv(other, "--fresh")) == 2
    line = one_error_line(capsys)
    assert str(other) in line and RUN_MARKER in line and "notes.txt" in line and "nothing was deleted" in line
    assert main(train_argv(other)) == 2  # a new run does not mix its files into it either
    assert "not a keras-selffb run" in one_error_line(capsys)
    assert os.listdir(other) == ["notes.txt"] and (other / "notes.txt").read_text() == "hi"
    # The parent of runs is not a run: --fresh on it deletes nothing.
    parent = root / "runs"
    shutil.copytree(root / "run", parent / "a")
    before = tree_hash(parent)
    assert main(train_argv(parent, "--fresh")) == 2
    assert "is not one" in one_error_line(capsys)
    assert tree_hash(parent) == before


def test_fresh_with_a_bad_name_or_bad_data_deletes_nothing(run_copy, capsys, monkeypatch):
    root = run_copy
    monkeypatch.chdir(root)
    shutil.copytree(root / "run", root / "runs" / "other")
    (root / "empty.jsonl").write_text("")
    before = tree_hash(root)
    # `--name ""` once meant runs/ itself, deleted with everything in it.
    assert main(["train", "--name", "", "--fresh", "--data", "nope.jsonl"]) == 2
    assert "name" in one_error_line(capsys).lower()
    for data, message in (("typo.jsonl", "Data file not found: typo.jsonl"), ("empty.jsonl", "empty.jsonl")):
        assert main(["train", "--data", data, "--output", "run", "--fresh"]) == 2
        assert message in one_error_line(capsys)
    assert tree_hash(root) == before


def test_fresh_deletes_a_marked_run_or_an_earlier_versions_run_only(tmp_path):
    def config(path):
        return TrainConfig.from_dict({**TINY, "output": str(path)})

    marked = tmp_path / "marked"
    (marked / "checkpoints").mkdir(parents=True)
    (marked / RUN_MARKER).write_text("{}")
    (marked / "notes.txt").write_text("kept with the run")
    assert check_resumable(config(marked), fresh=True) == "run"
    assert not marked.exists()

    # Made before the marker: config.yaml, tokenizer.json, checkpoints/ and nothing else.
    legacy = tmp_path / "legacy"
    (legacy / "checkpoints" / "mle").mkdir(parents=True)
    (legacy / "config.yaml").write_text(yaml.safe_dump(TINY))
    (legacy / "tokenizer.json").write_text("{}")
    (legacy / "rl_history.csv").write_text("epoch\n")
    assert check_resumable(config(legacy), fresh=True) == "legacy"
    assert not legacy.exists()

    # The same with a file no run writes: refused, nothing deleted.
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.yaml").write_text(yaml.safe_dump(TINY))
    (legacy / "thesis.tex").write_text("mine")
    with pytest.raises(ValueError, match=r"no \.keras-selffb-run file; it holds thesis\.tex"):
        check_resumable(config(legacy), fresh=True)
    assert (legacy / "thesis.tex").exists()

    # A run directory that holds the data file is not deleted.
    marked.mkdir()
    (marked / RUN_MARKER).write_text("{}")
    write_data(marked / "pairs.jsonl")
    with pytest.raises(ValueError, match="holds the data file"):
        check_resumable(TrainConfig.from_dict({**TINY, "output": str(marked), "data": str(marked / "pairs.jsonl")}),
                        fresh=True)
    assert (marked / "pairs.jsonl").exists()


def test_changed_data_is_refused_before_any_file_of_the_run_changes(run_copy, capsys):
    root = run_copy
    run = root / "run"
    write_data(root / "pairs.jsonl", extra=json.dumps({"prompt": "zq", "response": "xw"}))
    before = tree_hash(run)
    assert main(train_argv(run)) == 2
    line = one_error_line(capsys)
    assert "trained on other data" in line and "nothing was changed" in line
    assert tree_hash(run) == before
    # The run still serves.
    assert main(["generate", "--run", str(run), "hello 1"]) == 0
    capsys.readouterr()

    # A run made before the marker: its tokenizer.json catches the new characters.
    os.remove(run / RUN_MARKER)
    before = tree_hash(run)
    assert main(train_argv(run)) == 2
    assert "its tokenizer.json differs" in one_error_line(capsys)
    assert tree_hash(run) == before


def test_an_earlier_versions_run_resumes_and_gets_the_marker(run_copy, capsys):
    root = run_copy
    run = root / "run"
    os.remove(run / RUN_MARKER)
    policy = (run / "policy_mle.keras").read_bytes()
    assert main(train_argv(run)) == 0
    out = capsys.readouterr().out
    assert "a run of an earlier keras-selffb" in out and "MLE stage already finished" in out
    marker = json.loads((run / RUN_MARKER).read_text(encoding="utf-8"))
    assert marker["data"]["sha256"] == hashlib.sha256((root / "pairs.jsonl").read_bytes()).hexdigest()
    assert (run / "policy_mle.keras").read_bytes() == policy


def test_resume_says_which_given_setting_differs_and_refuses_config(run_copy, capsys):
    root = run_copy
    run = root / "run"
    before = tree_hash(run)
    assert main(["train", "--resume", "--output", str(run), "--epochs", "6"]) == 2
    line = one_error_line(capsys)
    assert "--epochs 6 differs from the saved epochs: 1" in line and "(--resume)" not in line
    assert main(["train", "--resume", "--output", str(run), "--config", str(root / "tiny.yaml")]) == 2
    line = one_error_line(capsys)
    assert "cannot take --config" in line
    # Without --resume the advice to use it stays.
    assert main(train_argv(run, "--epochs", "6")) == 2
    assert "(--resume)" in one_error_line(capsys)
    assert tree_hash(run) == before


@pytest.mark.parametrize("output,message", [
    ("{tmp}/afile/run", "afile is a file, not a directory"),
    ("{tmp}/afile", "is a file, not a directory"),
    ("/sys/keras-selffb-run", "/sys/keras-selffb-run"),
    ("/proc/keras-selffb-run", "/proc/keras-selffb-run"),
])
def test_an_output_that_cannot_be_written_is_one_line(run_copy, capsys, output, message):
    (run_copy / "afile").write_text("a file")
    assert main(train_argv(output.replace("{tmp}", str(run_copy)))) == 2
    line = one_error_line(capsys)
    assert message in line and "Traceback" not in line
    assert not os.path.exists("/sys/keras-selffb-run")


def test_read_only_file_system_is_one_line(run_copy, capsys, monkeypatch):
    def read_only(path, text):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(run_directory, "_write_text", read_only)
    new = run_copy / "new"
    assert main(train_argv(new)) == 2
    line = one_error_line(capsys)
    assert f"{new / RUN_MARKER}: {os.strerror(errno.EROFS)} (EROFS)" in line
    assert "resume" not in line  # nothing to resume: the run was never created


def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(run_copy, capsys, monkeypatch):
    def disk_full(history, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    run = run_copy / "new"
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "plot_curves", disk_full)  # after the MLE epochs were checkpointed
        assert main(train_argv(run)) == 2
    line = one_error_line(capsys)
    assert f"{run / 'curves.png'}: {os.strerror(errno.ENOSPC)} (ENOSPC)" in line
    assert "free some disk space, then run the same command again to resume" in line
    assert not (run / "policy_mle.keras").exists()
    assert main(train_argv(run)) == 0
    assert (run / "metrics.json").exists() and (run / "curves.png").exists()


def test_train_help_says_it_runs_the_rounds(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "self-feedback rounds" in out and "--verbose" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "default: 3 RL rounds" in capsys.readouterr().out


def test_warnings_print_as_one_plain_line():
    # The subprocess test above checks a real run's output; this one the format
    # itself: no file name, line number, category or source line.
    line = cli._format_warning("3 of 9 prompts were longer", UserWarning, "/x/pipeline.py", 266,
                               "pack = lambda pairs: pack_pairs(tokenizer, pairs)")
    assert line == "warning: 3 of 9 prompts were longer\n"


def test_rounds_plot_has_one_axis_per_scale():
    rounds = [{"round": r, "metrics": {"val_reward": 0.1 + 0.02 * r, "val_rouge_l": 0.12 + 0.03 * r,
                                       "val_bleu": 3.0 + 1.5 * r, "val_perplexity": 9.0 - 0.2 * r}}
              for r in range(4)]
    fig = pipeline.rounds_figure(rounds)
    labels = [sorted(line.get_label() for line in ax.get_lines()) for ax in fig.axes]
    assert labels == [["reward", "rouge_l"], ["bleu"], ["perplexity"]]
    low, high = fig.axes[0].get_ylim()
    assert high < 1.0 and high - low < 0.5  # ROUGE-L and the reward are not drawn on BLEU's 0-100 axis
    assert fig.axes[1].get_ylim()[1] > 7.0
    without = pipeline.rounds_figure([{"round": r["round"], "metrics": {"val_reward": 0.5}} for r in rounds])
    assert len(without.axes) == 1


TF_NOISE = re.compile(
    r"absl::InitializeLog|oneDNN|cuda drivers|cpu_feature_guard|cuInit|^[IWEF]\d{4} |UserWarning|"
    r"^\s+pack = lambda|rebuild TensorFlow", re.M)


def subprocess_env():
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as in a user's shell
    return env


@pytest.mark.slow
def test_a_fresh_train_prints_no_tensorflow_log_and_plain_warnings(tmp_path):
    write_data(tmp_path / "pairs.jsonl")
    # Short prompt/response columns: the packing warning fires.
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "prompt_length": 6, "response_length": 6}))
    result = subprocess.run(
        [sys.executable, "-m", "keras_selffb.cli", *train_argv("run")],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not TF_NOISE.search(output), output[:3000]
    assert re.search(r"^warning: \d+ of \d+ prompts were longer than 4 tokens", result.stderr, re.M)
    assert re.search(r"^devices: (CPU \(no GPU found\)|\d+ x GPU)", result.stdout, re.M)


def test_verbose_brings_the_tensorflow_log_back(tmp_path):
    argv = [sys.executable, "-m", "keras_selffb.cli", "train", "--data", str(tmp_path / "nope.jsonl"),
            "--output", str(tmp_path / "run")]
    quiet = subprocess.run(argv, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    verbose = subprocess.run([*argv, "--verbose"], env=subprocess_env(), capture_output=True, text=True,
                             timeout=300)
    assert quiet.returncode == verbose.returncode == 2
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-selffb train: error: ") and "nope.jsonl" in lines[0]
    assert TF_NOISE.search(verbose.stderr), verbose.stderr
