"""The code-execution sandbox and `CodeExecutionReward`: every failure mode is a counted 0.

Each failure mode (syntax error, exception, failed assert, timeout, memory,
endless output, writing files, sockets, processes, reading the run
directory) gives reward 0 with its reason; nothing is written outside the
sandbox's temporary directory; a `while True` costs the timeout; the reward
gives the same numbers inside a `tf.function` on token ids as the plain
runner; and training goes on when every candidate is garbage.
"""

import os
import tempfile
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.models import PolicyNetwork
from keras_selffb.rewards import CodeExecutionReward
from keras_selffb.rewards.code_execution import REASONS, plan_tests, run_sandboxed
from keras_selffb.text import CharTokenizer, pack_pairs
from keras_selffb.training import ReinforceTrainer

TESTS = "assert f(1) == 2\nassert f(2) == 4\nassert f(3) == 6\n"
# A timeout with room for a loaded CI machine (a correct program takes ~25 ms).
LIMITS = dict(timeout=4.0, memory_mb=128, max_output_bytes=64 * 1024)
HERE = os.path.dirname(os.path.abspath(__file__))


def run(program, tests=TESTS, **kwargs):
    return run_sandboxed(program, tests, **{**LIMITS, **kwargs})


def test_correct_solution_scores_one():
    result = run("def f(x):\n    return 2 * x\n")
    assert (result.passed, result.total, result.reason, result.reward) == (3, 3, "passed", 1.0)
    assert result.detail == ""


def test_partial_credit_is_exact():
    # f(3) == 0, not 6: two of the three asserts pass.
    result = run("def f(x):\n    return 2 * x if x < 3 else 0\n")
    assert (result.passed, result.total, result.reason) == (2, 3, "exception")
    assert result.reward == 2 / 3
    assert result.detail.startswith("AssertionError")


def test_test_functions_and_setup_are_split():
    tests = (
        "import math\n"
        "def helper(x):\n    assert x\n"  # a helper with an assert: setup, not a test
        "assert True\n"  # a constant assert: setup
        "def test_one():\n    assert f(1) == 2\n"
        "def test_three():\n    assert f(3) == 6\n"
        "for x in (1, 2):\n    assert f(x) == 2 * x\n"
    )
    units, functions, total = plan_tests(tests)
    assert [kind for kind, _ in units] == ["setup", "setup", "setup", "setup", "setup", "test"]
    assert functions == ("test_one", "test_three") and total == 3
    result = run("def f(x):\n    return 2 * x if x < 3 else -1\n", tests)
    assert (result.passed, result.total, result.reason) == (2, 3, "exception")
    # No assert and no test function: the source is one test, passed when it runs.
    assert plan_tests("check(f)\n")[2] == 1
    assert run("def f(x):\n    return x\n", "def check(g):\n    assert g(1) == 1\ncheck(f)\n").reward == 1.0
    assert run("def f(x):\n    return 0\n", "def check(g):\n    assert g(1) == 1\ncheck(f)\n").reward == 0.0


def test_syntax_error():
    result = run("def f(x) return 2 * x\n")
    assert (result.reward, result.reason) == (0.0, "syntax_error")
    assert run("x = '\0'\0").reason == "syntax_error"  # a NUL byte: ValueError from compile


def test_exceptions_in_program_and_in_tests():
    result = run("raise KeyError('boom')\n")
    assert (result.reward, result.reason) == (0.0, "exception")
    assert "KeyError" in result.detail
    result = run("def f(x):\n    return {1: 2}[x]\n")  # KeyError in tests 2 and 3
    assert (result.passed, result.reason) == (1, "exception")
    assert run("import sys\nsys.exit(0)\n").reason == "exception"  # SystemExit is caught
    assert run("def f(x):\n    return f(x)\n").reason == "exception"  # RecursionError


def test_failed_asserts_score_zero():
    result = run("def f(x):\n    return 0\n")
    assert (result.passed, result.reward, result.reason) == (0, 0.0, "exception")


def test_while_true_costs_the_timeout_and_is_killed():
    timeout = 1.0
    start = time.monotonic()
    result = run("import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass\n", timeout=timeout)
    elapsed = time.monotonic() - start
    assert (result.reward, result.reason) == (0.0, "timeout")
    assert elapsed >= timeout and elapsed < timeout * 5 + 5
    pid = int(result.output.split()[0])
    with pytest.raises(ProcessLookupError):  # the child is gone (killed and reaped)
        os.kill(pid, 0)


def test_memory_blow_up():
    assert run("x = bytearray(10 ** 10)\n").reason == "memory"
    result = run("x = []\nwhile True:\n    x.append(' ' * 10 ** 6)\n")
    assert (result.reward, result.reason) == (0.0, "memory")
    # In a test too, after a passing one: the whole candidate is 0.
    result = run("def f(x):\n    return 2 * x if x < 2 else bytearray(10 ** 10)\n")
    assert (result.passed, result.reason) == (0, "memory")


def test_endless_output_hits_the_output_limit():
    start = time.monotonic()
    result = run("while True:\n    print('spam ' * 100)\n", timeout=5.0)
    assert (result.reward, result.reason) == (0.0, "output_limit")
    assert time.monotonic() - start < 5.0  # stopped by the size, not by the clock
    assert len(result.output) <= 2000
    # One huge write and a huge file in the sandbox's own directory: the same.
    assert run("import sys\nsys.stdout.write('x' * 10 ** 6)\nsys.stdout.flush()\n").reason == "output_limit"
    assert run("open('big', 'w').write('x' * 10 ** 6)\n").reason == "output_limit"


@pytest.mark.parametrize("where", ["tmp", "tests_dir"])
def test_writing_outside_the_sandbox_is_forbidden(where):
    directory = tempfile.gettempdir() if where == "tmp" else HERE
    path = os.path.join(directory, f"selffb_outside_{where}.txt")
    assert not os.path.exists(path)
    for program in (
        f"open({path!r}, 'w').write('x')\n",
        f"import pathlib\npathlib.Path({path!r}).write_text('x')\n",
        f"import os\nos.close(os.open({path!r}, os.O_WRONLY | os.O_CREAT))\n",
        # Caught by the candidate: still 0, still counted.
        f"try:\n    open({path!r}, 'a')\nexcept OSError:\n    pass\ndef f(x):\n    return 2 * x\n",
    ):
        result = run(program)
        assert (result.reward, result.reason) == (0.0, "forbidden_file_write"), program
        assert not os.path.exists(path)


def test_removing_and_renaming_outside_are_forbidden(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for program in (
        f"import os\nos.remove({str(victim)!r})\n",
        f"import os\nos.rename({str(victim)!r}, 'mine.txt')\n",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
        f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link', 'w').write('x')\n",
    ):
        assert run(program).reason == "forbidden_file_write", program
    assert victim.read_text() == "keep me"


def test_writing_inside_the_sandbox_is_allowed():
    result = run("import os\nopen('notes.txt', 'w').write('x')\nos.mkdir('d')\nos.remove('notes.txt')\n"
                 "def f(x):\n    return 2 * x\n")
    assert result.reason == "passed"


def test_sockets_are_forbidden():
    for program in (
        "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
        "import socket\ns = socket.socket()\n",
        "import urllib.request\nurllib.request.urlopen('http://example.com')\n",
    ):
        result = run(program)
        assert (result.reward, result.reason) == (0.0, "forbidden_network"), program


def test_processes_are_forbidden():
    marker = os.path.join(tempfile.gettempdir(), "selffb_pwned")
    for program in (
        f"import os\nos.system('touch {marker}')\n",
        f"import subprocess\nsubprocess.run(['touch', {marker!r}])\n",
        "import os\nos.fork()\n",
        "import os\nos.execv('/bin/true', ['true'])\n",
        "import os, signal\nos.kill(1, signal.SIGTERM)\n",
    ):
        result = run(program)
        assert (result.reward, result.reason) == (0.0, "forbidden_process"), program
    assert not os.path.exists(marker)
    assert run("import ctypes\nctypes.CDLL(None)\n").reason == "forbidden_system"


def test_reading_the_protected_directory_is_forbidden(tmp_path):
    (tmp_path / "secret.txt").write_text("weights")
    for program in (f"open({str(tmp_path / 'secret.txt')!r}).read()\n", f"import os\nos.listdir({str(tmp_path)!r})\n"):
        result = run(program, protected_dirs=[str(tmp_path)])
        assert (result.reward, result.reason) == (0.0, "forbidden_file_read")
    # Not protected: reading is allowed (and the tests then run).
    assert run(f"open({str(tmp_path / 'secret.txt')!r}).read()\ndef f(x):\n    return 2 * x\n").reason == "passed"


def test_crash_without_result():
    result = run("import os\nos._exit(0)\n")
    assert (result.reward, result.reason) == (0.0, "crash")


def test_nothing_is_written_outside_the_temporary_directory(tmp_path):
    (tmp_path / "data.txt").write_text("original")

    def snapshot():
        return {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}

    before = snapshot()
    # tmp_path is watched whole; elsewhere (other processes write there) only our names.
    elsewhere = [os.path.join(d, "selffb_leak.txt") for d in (HERE, os.getcwd(), tempfile.gettempdir())]
    hostile = [f"open({path!r}, 'w').write('x')\n" for path in elsewhere] + [
        f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')\n",
        f"open({str(tmp_path / 'data.txt')!r}, 'a').write('x')\n",
        f"import os\nos.makedirs({str(tmp_path / 'a' / 'b')!r})\n",
        f"import shutil\nshutil.copy('/etc/hostname', {str(tmp_path / 'copy')!r})\n",
        f"import os\nos.chmod({str(tmp_path / 'data.txt')!r}, 0o777)\n",
        "import os\nprint(os.getcwd(), flush=True)\nopen('inside.txt', 'w').write('fine')\n"
        "def f(x):\n    return 2 * x\n",
        "while True:\n    print('x' * 1000)\n",
    ]
    reward = CodeExecutionReward(CharTokenizer.train(["a"]), lambda p, r: TESTS, max_workers=4, **LIMITS)
    results = reward.score_texts([""] * len(hostile), hostile, [""] * len(hostile))
    assert [r.reason for r in results[:-2]] == ["forbidden_file_write"] * (len(hostile) - 2)
    assert [r.reason for r in results[-2:]] == ["passed", "output_limit"]
    assert snapshot() == before
    assert not any(os.path.exists(path) for path in elsewhere)
    sandbox = results[-2].output.split()[0]
    assert sandbox.startswith(os.path.realpath(tempfile.gettempdir())) and not os.path.exists(sandbox)


def test_bad_arguments_are_one_line_errors():
    for kwargs, message in (
        (dict(timeout=0), "timeout must be > 0"),
        (dict(timeout=-1.0), "timeout must be > 0"),
        (dict(timeout=float("inf")), "timeout must be a finite number"),
        (dict(memory_mb=4), "memory_mb must be >= 16"),
        (dict(max_output_bytes=10), "max_output_bytes must be >= 1024"),
    ):
        with pytest.raises(ValueError, match=message):
            run_sandboxed("x = 1", TESTS, **kwargs)
    with pytest.raises(TypeError, match="tests must be Python source as a str"):
        run_sandboxed("x = 1", b"assert 1")
    with pytest.raises(TypeError, match="program must be Python source"):
        run_sandboxed(None, TESTS)
    with pytest.raises(ValueError, match="tests are empty"):
        run_sandboxed("x = 1", "  \n")
    with pytest.raises(ValueError, match=r"the tests do not parse \(line 1\)"):
        run_sandboxed("x = 1", "assert (")
    tokenizer = CharTokenizer.train(["a"])
    with pytest.raises(TypeError, match="tests must be a mapping"):
        CodeExecutionReward(tokenizer, "assert f(1) == 2")
    with pytest.raises(ValueError, match="program must be one of"):
        CodeExecutionReward(tokenizer, {}, program="prompt")
    with pytest.raises(ValueError, match="max_workers must be an integer >= 1"):
        CodeExecutionReward(tokenizer, {}, max_workers=0)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        CodeExecutionReward(tokenizer, {}, timeout=0)
    with pytest.raises(ValueError, match="no tests for the prompt"):
        CodeExecutionReward(tokenizer, {"a": TESTS}).score_texts(["b"], ["x = 1"], [""])


def test_a_hung_candidate_does_not_hold_up_the_others():
    reward = CodeExecutionReward(CharTokenizer.train(["a"]), {"f": TESTS}, max_workers=4, **LIMITS)
    programs = ["def f(x):\n    return 2 * x\n"] * 3 + ["while True:\n    pass\n"]
    start = time.monotonic()
    results = reward.score_texts(["f"] * 4, programs, [""] * 4)
    assert [r.reason for r in results] == ["passed"] * 3 + ["timeout"]
    assert time.monotonic() - start < LIMITS["timeout"] * 5 + 5
    # Identical rows run once; every row is counted.
    assert reward.reason_counts() == {**{r: 0 for r in REASONS}, "passed": 3, "timeout": 1}
    assert reward.calls == 1 and reward.candidates == 4
    assert dict(reward.reset_counts()) == {"passed": 3, "timeout": 1}
    assert sum(reward.reason_counts().values()) == 0 and reward.candidates == 0


def test_reward_in_tf_function_matches_the_runner():
    programs = [
        "def f(x):\n    return 2 * x\n",
        "def f(x):\n    return 2 * x if x < 3 else 0\n",
        "def f(x):\n    return 2 * x if x == 1 else x\n",  # only f(1) is right
        "def f(x) return\n",
        "while True:\n    pass\n",
        "def f(x):\n    return 2 * x\n",
    ]
    prompts = ["double", "double", "double", "double", "triple", "triple"]
    suites = {"double": TESTS, "triple": "assert f(1) == 3\n"}
    tokenizer = CharTokenizer.train(programs + prompts)
    packed = pack_pairs(tokenizer, list(zip(prompts, programs)), 10, 48)
    prompt_ids, candidate_ids = packed[:, :10], packed[:, 10:]
    reward = CodeExecutionReward(tokenizer, suites, max_workers=4, **LIMITS)

    @tf.function
    def score(p, c, r):
        return reward(p, c, r)

    values = score(tf.constant(prompt_ids), tf.constant(candidate_ids), tf.constant(candidate_ids)).numpy()
    expected = [run(prog, suites[p]).reward for p, prog in zip(prompts, programs)]
    np.testing.assert_allclose(values, expected)
    np.testing.assert_allclose(values, [1.0, 2 / 3, 1 / 3, 0.0, 0.0, 0.0], rtol=1e-6)
    assert values.dtype == np.float32
    assert dict(reward.reset_counts()) == {"passed": 1, "exception": 3, "syntax_error": 1, "timeout": 1}


def test_prompt_plus_candidate_and_reference_lookup():
    tokenizer = CharTokenizer.train(["a"])
    suites = {"T1": "assert g(2) == 3\n"}
    reward = CodeExecutionReward(tokenizer, lambda prompt, reference: suites[reference],
                                 program="prompt+candidate", **LIMITS)
    results = reward.score_texts(["def g(x):\n"], ["    return x + 1\n"], ["T1"])
    assert results[0].reason == "passed"


def test_training_continues_when_every_candidate_is_garbage():
    text = "def f(x):\n    return 2 * x\n"
    tokenizer = CharTokenizer.train([text, "f"])
    reward = CodeExecutionReward(tokenizer, {"f": TESTS}, max_workers=2, **{**LIMITS, "timeout": 1.0})
    policy = PolicyNetwork(tokenizer.vocabulary_size, 8, 8)
    trainer = ReinforceTrainer(policy, reward, prompt_length=4, max_new_tokens=8, num_samples=2, seed=0)
    trainer.compile(optimizer="adam")
    packed = pack_pairs(tokenizer, [("f", text[:6])] * 4, 4, 8, warn=False)
    before = [w.numpy().copy() for w in policy.trainable_weights]
    history = trainer.fit(packed, batch_size=2, epochs=2, verbose=0).history
    assert all(np.isfinite(history["loss"])) and history["reward"] == [0.0, 0.0]
    counts = reward.reason_counts()
    assert counts["passed"] == 0
    # 2 epochs x 2 batches x 2 prompts x 2 samples, every one counted under some reason.
    assert sum(counts.values()) == reward.candidates == 16 and reward.calls == 4
    assert counts["syntax_error"] + counts["exception"] > 0
    # All rewards equal: RLOO advantages are 0, so the weights did not move (and are finite).
    for a, b in zip(before, policy.trainable_weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_environment_is_scrubbed_and_runs_are_seeded(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.getcwd())
    monkeypatch.setenv("SELFFB_SECRET", "token")
    program = (
        "import os, random, sys\n"
        "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\n"
        "assert 'PYTHONPATH' not in os.environ and 'SELFFB_SECRET' not in os.environ\n"
        "assert '' not in sys.path and os.getcwd() not in sys.path\n"
        "print(random.random(), list({'a', 'b', 'c', 'd', 'e', 'f'}))\n"
        "def f(x):\n    return 2 * x\n"
    )
    first, again, other = (run(program, seed=seed) for seed in (0, 0, 1))
    assert first.reason == again.reason == other.reason == "passed", first.detail
    assert first.output == again.output != other.output
    with pytest.raises(ValueError, match="seed must be an integer"):
        run(program, seed=-1)
