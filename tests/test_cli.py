"""The `keras-selffb` command end to end on a tiny data file, and its errors."""

import json
import os

import keras
import numpy as np
import pytest
import yaml

from conftest import CLI_PAIRS
from keras_selffb.cli import main


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    # Each pair many times so the validation split holds prompts the model
    # has seen answered (the split is by prompt: use distinct variants).
    lines = []
    for i in range(12):
        for prompt, response in CLI_PAIRS:
            lines.append(json.dumps({"prompt": f"{prompt} {i}", "response": response}, ensure_ascii=False))
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.mark.slow
def test_train_then_generate(tmp_path, data_file, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {"embedding_dim": 16, "hidden_dim": 32, "batch_size": 8, "learning_rate": 0.01,
             "prompt_length": 24, "response_length": 16, "num_samples": 2,
             "rl_steps": 3, "rl_batch_size": 4, "rl_samples": 2, "rl_learning_rate": 1e-3,
             "feedback_rounds": 1, "contrastive_epochs": 1}
        )
    )
    run = tmp_path / "run"
    code = main(["train", "--config", str(config), "--data", str(data_file),
                 "--output", str(run), "--epochs", "6", "--seed", "3"])
    assert code == 0
    for name in ("tokenizer.json", "policy.keras", "policy_mle.keras", "config.yaml", "metrics.json",
                 "history.csv", "curves.png", "rl_history.csv", "rounds.png"):
        assert (run / name).exists(), name
    assert os.listdir(run / "logs")  # TensorBoard event files
    report = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    mle = report["mle"]
    assert mle["validation_perplexity"] < 0.5 * mle["validation_unigram_perplexity"]
    assert len(report["samples"]) == 2
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert report["rounds"][1]["rl"]["steps"] == 3
    assert report["feedback"]["methods"] == ["rl"]
    assert report["contrastive"]["mode"] == "sequence_likelihood"
    assert -1.0 <= report["contrastive"]["after"]["spearman"] <= 1.0
    for stage in ("mle", "round 1", "contrastive"):
        scores = report["validation"][stage]
        assert 0.0 <= scores["rouge_l"] <= 1.0 and 0.0 <= scores["bleu"] <= 100.0
    # The MLE-stage perplexity of the report is the one the evaluation recomputes.
    assert report["validation"]["mle"]["perplexity"] == pytest.approx(mle["validation_perplexity"], rel=1e-3)
    out = capsys.readouterr().out
    assert "unigram" in out and "after round 1" in out and "contrastive (sequence_likelihood)" in out
    # The default reward is the composite one, with the learned judge: trained,
    # saved with the run, each term logged; every evaluation reports the
    # collapse guards by these names.
    assert (run / "judge.keras").exists() and report["judge"]["epochs"] == 10
    assert 0.0 <= report["judge"]["validation_reference_retrieval_accuracy"] <= 1.0
    names = {"rouge_l", "bleu", "perplexity", "reward", "distinct_1", "distinct_2", "distinct_replies",
             "self_bleu", "mean_reply_length", "judge_retrieval_accuracy"}
    assert set(report["validation"]["mle"]) == names and set(report["validation"]["round 1"]) == names
    assert set(report["validation"]["contrastive"]) == names - {"reward"}
    header = open(run / "rl_history.csv", encoding="utf-8").readline()
    for term in ("rouge_l", "judge_relevance", "informativeness", "fluency", "novelty"):
        assert f"reward/{term}" in header, term
    assert report["feedback"]["final_round"] in (0, 1)
    # Sample replies before and after the rounds, side by side, for the same prompts.
    assert all(set(s) == {"prompt", "reference", "mle_reply", "reply"} for s in report["samples"])
    assert out.count("  after MLE:    ") == 2 and out.count("  after rounds: ") == 2
    assert "judge@20" in out and "selfBLEU" in out

    # Run again: the finished MLE stage is loaded, not retrained, the
    # finished rounds are not run again, nor is the contrastive stage; the
    # report and the final policy are the same.
    final = keras.saving.load_model(run / "policy.keras").get_weights()
    assert main(["train", "--config", str(config), "--data", str(data_file),
                 "--output", str(run), "--epochs", "6", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "MLE stage already finished" in out and "resuming after round 1" in out
    assert "contrastive stage already finished" in out
    again = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert again["contrastive"] == report["contrastive"] and again["validation"] == report["validation"]
    for a, b in zip(keras.saving.load_model(run / "policy.keras").get_weights(), final):
        np.testing.assert_array_equal(a, b)

    assert main(["generate", "--run", str(run), "hello 3", "你好 5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "> hello 3" and out[2] == "> 你好 5"
    assert main(["generate", "--run", str(run), "--sampler", "top_k", "--seed", "1", "hello"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", "--run", str(run), "--sampler", "top_k", "--seed", "1", "hello"]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--data", "/nonexistent/data.jsonl", "--output", "{tmp}/r"], "Data file not found"),
        (["train", "--config", "/nonexistent.yaml"], "Config file not found"),
        (["train", "--config", "{tmp}/bad.yaml"], "unknown setting(s) ['epoch']"),
        (["train", "--config", "{tmp}/greedy.yaml"], "'rl_include_greedy' needs rl_samples >= 2"),
        (["generate", "--run", "{tmp}/missing", "hi"], "Run directory not found"),
        (["generate", "--run", "{tmp}", "hi"], "has no policy.keras"),
    ],
)
def test_bad_input_gets_one_clear_line(tmp_path, capsys, argv, message):
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    (tmp_path / "greedy.yaml").write_text("rl_baseline: self_critical\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
