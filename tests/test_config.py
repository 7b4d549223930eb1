"""`TrainConfig` refuses every bad setting when it is made, naming the field."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml

from keras_selffb import config as config_module
from keras_selffb.config import TrainConfig

# (overrides, field the message must name, a fragment of what is allowed)
BAD = [
    # types
    ({"epochs": "3"}, "epochs", "must be an integer"),
    ({"epochs": 3.0}, "epochs", "must be an integer"),
    ({"epochs": True}, "epochs", "must be an integer"),
    ({"deduplicate": "yes"}, "deduplicate", "must be true or false"),
    ({"deduplicate": 1}, "deduplicate", "must be true or false"),
    ({"rl_include_greedy": "false"}, "rl_include_greedy", "must be true or false"),
    ({"learning_rate": "fast"}, "learning_rate", "must be a number"),
    ({"learning_rate": None}, "learning_rate", "must be a number"),
    ({"dropout": True}, "dropout", "must be a number"),
    ({"sampler": 3}, "sampler", "must be a string"),
    ({"feedback_target": "high"}, "feedback_target", "must be a number or null"),
    ({"vocabulary_size": "100"}, "vocabulary_size", "must be an integer or null"),
    # finite floats
    ({"learning_rate": math.nan}, "learning_rate", "finite"),
    ({"learning_rate": "nan"}, "learning_rate", "finite"),
    ({"rl_learning_rate": math.inf}, "rl_learning_rate", "finite"),
    ({"feedback_target": -math.inf}, "feedback_target", "finite"),
    ({"rl_kl_coef": math.nan}, "rl_kl_coef", "finite"),
    # names and paths
    ({"name": ""}, "name", "plain name"),
    ({"name": "a/b"}, "name", "plain name"),
    ({"name": "a\\b"}, "name", "plain name"),
    ({"name": "."}, "name", "plain name"),
    ({"name": ".."}, "name", "plain name"),
    ({"name": " run"}, "name", "plain name"),
    ({"output": ""}, "output", "directory path or null"),
    ({"output": "   "}, "output", "directory path or null"),
    ({"data": ""}, "data", "ending in one of ['.json', '.jsonl', '.tsv', '.txt']"),
    ({"data": "pairs.csv"}, "data", "ending in one of"),
    ({"data": "pairs"}, "data", "ending in one of"),
    # choices
    ({"language": "fr"}, "language", "one of ['en', 'zh']"),
    ({"tokenizer": "bpe"}, "tokenizer", "one of ['char', 'wordpiece']"),
    ({"sampler": "bogus"}, "sampler", "one of ['greedy', 'top_k', 'top_p', 'random', 'beam']"),
    ({"rl_baseline": "bogus"}, "rl_baseline", "one of ['rloo', 'group_mean', 'self_critical', 'moving_average', 'none']"),
    ({"rl_reward": "meteor"}, "rl_reward", "one of ['composite', 'rouge_l', 'bleu', 'chrf', 'article']"),
    ({"strategy": "tpu"}, "strategy", "one of ['default', 'mirrored', 'multi_worker']"),
    ({"contrastive_mode": "x"}, "contrastive_mode", "one of ['sequence_likelihood', 'encoder']"),
    ({"model": "gemma"}, "model", "one of ['lstm', 'gpt2', 'llama']"),
    ({"model": "GPT2"}, "model", "one of ['lstm', 'gpt2', 'llama']"),
    ({"feedback_monitor": "val_loss"}, "feedback_monitor", "one of ['val_rouge_l'"),
    ({"feedback_methods": "rl,ppo"}, "feedback_methods", "'rl', 'filtered', 'contrastive' and/or 'dpo'"),
    ({"feedback_methods": ""}, "feedback_methods", "'rl', 'filtered', 'contrastive' and/or 'dpo'"),
    ({"feedback_methods": "rl,"}, "feedback_methods", "'rl', 'filtered', 'contrastive' and/or 'dpo'"),
    # integers
    ({"prompt_length": 2}, "prompt_length", ">= 3"),
    ({"response_length": 1}, "response_length", ">= 2"),
    ({"embedding_dim": 0}, "embedding_dim", ">= 1"),
    ({"hidden_dim": 0}, "hidden_dim", ">= 1"),
    ({"num_layers": 0}, "num_layers", ">= 1"),
    ({"batch_size": 0}, "batch_size", ">= 1"),
    ({"epochs": 0}, "epochs", ">= 1"),
    ({"patience": 0}, "patience", ">= 1"),
    ({"num_samples": 0}, "num_samples", ">= 1"),
    ({"filter_epochs": 0}, "filter_epochs", ">= 1"),
    ({"rl_samples": 0}, "rl_samples", ">= 1"),
    ({"rl_batch_size": 0}, "rl_batch_size", ">= 1"),
    ({"feedback_rounds": -1}, "feedback_rounds", ">= 0"),
    ({"rl_steps": -1, "feedback_rounds": 0}, "rl_steps", ">= 0"),
    ({"contrastive_epochs": -1}, "contrastive_epochs", ">= 0"),
    ({"num_heads": 0}, "num_heads", ">= 1"),
    ({"num_heads": 2.0}, "num_heads", "must be an integer"),
    ({"lora_rank": -1}, "lora_rank", ">= 0"),
    ({"lora_rank": True}, "lora_rank", "must be an integer"),
    ({"seed": -1}, "seed", "in [0, 2**32 - 1]"),
    ({"seed": 2**32}, "seed", "in [0, 2**32 - 1]"),
    ({"vocabulary_size": 5}, "vocabulary_size", "null or > 5"),
    # floats
    ({"learning_rate": 0}, "learning_rate", "> 0"),
    ({"learning_rate": -1e-3}, "learning_rate", "> 0"),
    ({"rl_learning_rate": -1.0}, "rl_learning_rate", "> 0"),
    ({"filter_learning_rate": 0.0}, "filter_learning_rate", "> 0"),
    ({"rl_temperature": 0}, "rl_temperature", "> 0"),
    ({"rl_temperature": -0.5}, "rl_temperature", "> 0"),
    ({"rl_kl_coef": -0.1}, "rl_kl_coef", ">= 0"),
    ({"rl_gamma": 1.5}, "rl_gamma", "in [0, 1]"),
    ({"rl_gamma": -0.1}, "rl_gamma", "in [0, 1]"),
    ({"dropout": 1.0}, "dropout", "in [0, 1)"),
    ({"dropout": -0.1}, "dropout", "in [0, 1)"),
    ({"filter_quantile": 1.5}, "filter_quantile", "in [0, 1]"),
    ({"filter_quantile_step": -0.1}, "filter_quantile_step", ">= 0"),
    ({"validation_fraction": 0.0}, "validation_fraction", "in (0, 1)"),
    ({"validation_fraction": -0.1}, "validation_fraction", "in (0, 1)"),
    ({"test_fraction": -0.1}, "test_fraction", ">= 0"),
    ({"validation_fraction": 0.5, "test_fraction": 0.5}, "test_fraction", "sum to less than 1"),
    ({"feedback_target": 20.0}, "feedback_target", "in [0.0, 1.0] for feedback_monitor 'val_rouge_l'"),
    ({"feedback_target": -0.1}, "feedback_target", "in [0.0, 1.0]"),
    ({"feedback_monitor": "val_bleu", "feedback_target": 101.0}, "feedback_target", "in [0.0, 100.0]"),
    ({"feedback_monitor": "val_perplexity", "feedback_target": 0.5}, "feedback_target", "in [1.0, inf]"),
    # combinations the rounds would fail on
    ({"model": "gpt2", "hidden_dim": 30, "num_heads": 4}, "num_heads", "must divide hidden_dim (30)"),
    ({"model": "llama", "hidden_dim": 64, "num_heads": 5}, "num_heads", "must divide hidden_dim (64)"),
    ({"lora_rank": 2}, "lora_rank", "must be 0 for model 'lstm'"),
    ({"preset": 3}, "preset", "must be a string or null"),
    ({"preset": ""}, "preset", "empty string"),
    ({"preset": "presets/gpt2", "model": "llama"}, "preset", "'preset' and 'model' exclude each other"),
    ({"preset": "presets/gpt2", "vocabulary_size": 100}, "preset", "own tokenizer"),
    ({"rl_steps": 0}, "rl_steps", ">= 1 for the 'rl'/'contrastive'/'dpo' methods"),
    ({"rl_steps": 0, "feedback_methods": "contrastive"}, "rl_steps", ">= 1 for the 'rl'/'contrastive'"),
    ({"rl_steps": 0, "feedback_methods": "dpo"}, "rl_steps", ">= 1 for the 'rl'/'contrastive'/'dpo'"),
    ({"rl_baseline": "self_critical"}, "rl_include_greedy", "needs rl_samples >= 2"),
    ({"rl_samples": 1}, "rl_include_greedy", "needs rl_samples >= 2"),
    ({"rl_samples": 1, "rl_include_greedy": False}, "rl_samples", ">= 2 for rl_baseline 'rloo'"),
    ({"rl_samples": 1, "rl_include_greedy": False, "rl_baseline": "group_mean"}, "rl_samples",
     ">= 2 for rl_baseline 'group_mean'"),
    ({"rl_samples": 1, "rl_include_greedy": False, "rl_baseline": "none", "feedback_methods": "contrastive"},
     "rl_samples", ">= 2 for the 'contrastive' method"),
    ({"rl_samples": 1, "rl_include_greedy": False, "rl_baseline": "none", "feedback_methods": "dpo"},
     "rl_samples", ">= 2 for the 'dpo' method"),
    # DPO
    ({"dpo_beta": 0.0}, "dpo_beta", "> 0"),
    ({"dpo_beta": -0.1}, "dpo_beta", "> 0"),
    ({"dpo_beta": math.inf}, "dpo_beta", "finite"),
    ({"dpo_beta": "strong"}, "dpo_beta", "must be a number"),
    ({"dpo_loss_type": "hinge"}, "dpo_loss_type", "one of ['sigmoid', 'ipo']"),
    # corpus, composite reward, judge, collapse guard
    ({"corpus": "reddit"}, "corpus", "one of ['chatterbot', 'chitchat']"),
    ({"corpus": "chitchat", "language": "zh"}, "language", "must be 'en' for corpus 'chitchat'"),
    ({"corpus_pairs": 0}, "corpus_pairs", ">= 1"),
    ({"judge_epochs": -1}, "judge_epochs", ">= 0"),
    ({"judge_epochs": 0}, "reward_judge", "needs the judge"),
    ({"reward_rouge_l": 0, "reward_judge": 0, "reward_informativeness": 0, "reward_fluency": 0,
      "reward_novelty": 0}, "rl_reward", "weight other than 0"),
    ({"reward_judge": math.nan}, "reward_judge", "finite"),
    ({"reward_rouge_l": "high"}, "reward_rouge_l", "must be a number"),
    ({"reward_fluency": math.inf}, "reward_fluency", "finite"),
    ({"reward_informativeness": None}, "reward_informativeness", "must be a number"),
    ({"reward_novelty": math.nan}, "reward_novelty", "finite"),
    ({"feedback_min_distinct": 1.5}, "feedback_min_distinct", "in [0, 1]"),
    ({"feedback_min_distinct": -0.1}, "feedback_min_distinct", "in [0, 1]"),
    ({"feedback_keep_best": "yes"}, "feedback_keep_best", "true or false"),
]


def _case_id(case):
    overrides = case[0]
    return ",".join(f"{k}={v!r}" for k, v in overrides.items())


@pytest.mark.parametrize("overrides,field,allowed", BAD, ids=[_case_id(c) for c in BAD])
def test_bad_setting_is_refused_naming_the_field(overrides, field, allowed):
    with pytest.raises(ValueError) as info:
        TrainConfig(**overrides)
    message = str(info.value)
    assert f"'{field}'" in message, message
    assert allowed in message, message
    if field in overrides and not isinstance(overrides[field], float):  # what it got (nan/inf print as such)
        assert repr(overrides[field]) in message or str(overrides[field]) in message, message
    assert "\n" not in message


def test_every_field_has_a_refused_case():
    refused = {field for _, field, _ in BAD}
    assert {f.name for f in dataclasses.fields(TrainConfig)} - refused == set()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"test_fraction": 0.0, "dropout": 0.0, "rl_gamma": 0.0, "rl_kl_coef": 0.0},
        {"rl_gamma": 1.0, "filter_quantile": 1.0, "filter_quantile_step": 0.0},
        {"validation_fraction": 0.5, "test_fraction": 0.49},
        {"feedback_target": 0.0}, {"feedback_target": 1.0},
        {"feedback_monitor": "val_bleu", "feedback_target": 100.0},
        {"feedback_monitor": "val_perplexity", "feedback_target": 1.0},
        {"feedback_monitor": "val_reward", "feedback_target": -3.5},
        {"vocabulary_size": 6, "tokenizer": "wordpiece"},
        {"seed": 0}, {"seed": 2**32 - 1},
        {"name": "my-run_1.v2", "output": "some/dir/../run"},
        {"data": "dir.v1/Pairs.JSONL"}, {"data": "x.json"}, {"data": "x.tsv"}, {"data": "x.txt"},
        {"sampler": "beam", "rl_baseline": "moving_average"},
        # rl_samples 1 is fine where nothing samples K > 1 candidates per prompt.
        {"rl_samples": 1, "feedback_rounds": 0},
        {"rl_samples": 1, "feedback_methods": "filtered"},
        {"rl_samples": 1, "rl_include_greedy": False, "rl_baseline": "none"},
        {"rl_steps": 0, "feedback_methods": "filtered"},
        {"rl_steps": 0, "feedback_rounds": 0},
        {"feedback_methods": " rl , filtered ,contrastive"},
        {"feedback_methods": "filtered,dpo", "dpo_beta": 0.5, "dpo_loss_type": "ipo"},
        {"dpo_beta": 1, "rl_samples": 1, "feedback_methods": "filtered"},  # nothing pairs candidates
        {"model": "gpt2", "hidden_dim": 64, "num_heads": 8, "lora_rank": 4},
        {"preset": "presets/gpt2", "lora_rank": 4},
        {"model": "llama", "hidden_dim": 32, "num_heads": 2},
        {"hidden_dim": 30, "num_heads": 4},  # the LSTM has no heads
    ],
    ids=lambda o: _case_id((o,)) or "defaults",
)
def test_good_settings_are_accepted(overrides):
    config = TrainConfig(**overrides)
    for key, value in overrides.items():
        assert getattr(config, key) == value


def test_ints_become_floats_and_float_strings_are_parsed():
    config = TrainConfig(learning_rate=1, feedback_target="0.25", rl_kl_coef=" 5e-2 ")
    assert config.learning_rate == 1.0 and type(config.learning_rate) is float
    assert config.feedback_target == 0.25 and config.rl_kl_coef == 0.05


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("learning_rate: 1e-3\nrl_learning_rate: 5E-4\nfeedback_target: 2e-1\nepochs: 4\n")
    raw = yaml.safe_load(path.read_text())
    assert raw["learning_rate"] == "1e-3"  # PyYAML (YAML 1.1) reads it as a string
    config = TrainConfig.from_yaml(path)
    assert (config.learning_rate, config.rl_learning_rate, config.feedback_target) == (1e-3, 5e-4, 0.2)
    assert type(config.learning_rate) is float
    # The saved form round-trips as numbers.
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config


@pytest.mark.parametrize(
    "text,field,allowed",
    [
        ("learning_rate: 1e-3x\n", "learning_rate", "must be a number"),
        ("epochs: 1e1\n", "epochs", "must be an integer"),
        ("epochs: '3'\n", "epochs", "must be an integer"),
        ("deduplicate: 'true'\n", "deduplicate", "must be true or false"),
        ("learning_rate: .nan\n", "learning_rate", "finite"),
        ("sampler: bogus\n", "sampler", "one of ['greedy'"),
        ("rl_learning_rate: -1.0\n", "rl_learning_rate", "> 0"),
    ],
)
def test_bad_yaml_values_are_refused(tmp_path, text, field, allowed):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"'{field}'") + ".*" + re.escape(allowed)):
        TrainConfig.from_yaml(path)


def test_cli_refuses_a_bad_setting_before_running(tmp_path, capsys):
    from keras_selffb.cli import main

    (tmp_path / "bad.yaml").write_text("sampler: bogus\n")
    output = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "bad.yaml"), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "'sampler'" in err and "'bogus'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not output.exists()  # nothing was written


def test_allowed_names_match_the_code_that_uses_them():
    """config.py lists the names (to stay free of TensorFlow); they must match their sources."""
    from keras_selffb import distribute, loop
    from keras_selffb.models.generation import SAMPLERS
    from keras_selffb.text.tokenizer import NUM_RESERVED, train_tokenizer  # noqa: F401
    from keras_selffb.training.baselines import BASELINES
    from keras_selffb.training.contrastive_trainer import MODES

    assert set(config_module.SAMPLERS) == set(SAMPLERS)
    assert set(config_module.BASELINES) == set(BASELINES)
    assert set(config_module.METHODS) == set(loop.METHODS)
    assert set(config_module.STRATEGIES) == set(distribute.STRATEGIES)
    assert set(config_module._CHOICES["contrastive_mode"]) == set(MODES)
    from keras_selffb.training.dpo_trainer import LOSS_TYPES

    assert set(config_module.DPO_LOSS_TYPES) == set(LOSS_TYPES)
    from keras_selffb.pipeline import POLICY_KINDS

    assert set(config_module.MODELS) == set(POLICY_KINDS)
    assert config_module.NUM_RESERVED_TOKENS == NUM_RESERVED
    from keras_selffb.generator import METRICS
    from keras_selffb.pipeline import EVAL_METRICS

    assert set(EVAL_METRICS) <= set(METRICS)


def test_reading_a_config_imports_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from keras_selffb.config import TrainConfig; TrainConfig(sampler='beam'); "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_documented_yaml_example_is_valid():
    docs = Path(__file__).resolve().parents[1] / "docs" / "getting-started.md"
    settings = docs.read_text(encoding="utf-8").split("## Settings", 1)[1]
    block = settings.split("```yaml\n", 1)[1].split("```", 1)[0]
    TrainConfig.from_dict(yaml.safe_load(block))
