"""`TrainConfig`: the typed, frozen settings of a `keras-selffb train` run.

The CLI and YAML files fill it; library code below the pipeline takes plain
keyword arguments. Unknown keys, wrong types and values the run would fail
on later are refused when the config is made, each with one message naming
the field, the value and what is allowed. A string that reads as a finite
number is accepted for a float field (PyYAML reads `1e-3` as a string).
"""

import dataclasses
import math
import os
import typing

import yaml

from keras_selffb.data.loaders import CORPUS_LANGUAGES, DATA_EXTENSIONS

# Allowed names, listed here so that reading a config imports no TensorFlow;
# tests/test_config.py checks each list against the module that uses it.
SAMPLERS = ("greedy", "top_k", "top_p", "random", "beam")  # models.generation.SAMPLERS
BASELINES = ("rloo", "group_mean", "self_critical", "moving_average", "none")  # training.baselines.BASELINES
METHODS = ("rl", "filtered", "contrastive", "dpo")  # loop.METHODS
DPO_LOSS_TYPES = ("sigmoid", "ipo")  # training.dpo_trainer.LOSS_TYPES
STRATEGIES = ("default", "mirrored", "multi_worker")  # distribute.STRATEGIES
MODELS = ("lstm", "gpt2", "llama")  # pipeline.build_policy; the transformers: models.causal_lm_policy
NUM_RESERVED_TOKENS = 5  # text.tokenizer.NUM_RESERVED
MAX_SEED = 2**32 - 1  # numpy's seed range
CORPORA = ("chatterbot", "chitchat")  # pipeline.read_pairs
RL_REWARDS = ("composite", "rouge_l", "bleu", "chrf", "article")  # pipeline.make_reward
COMPOSITE_WEIGHTS = ("reward_rouge_l", "reward_judge", "reward_informativeness", "reward_fluency",
                     "reward_novelty")
_CHOICES = {
    "corpus": CORPORA,
    "language": tuple(CORPUS_LANGUAGES),
    "tokenizer": ("char", "wordpiece"),
    "sampler": SAMPLERS,
    "rl_reward": RL_REWARDS,
    "rl_baseline": BASELINES,
    "strategy": STRATEGIES,
    "model": MODELS,
    "contrastive_mode": ("sequence_likelihood", "encoder"),
    "dpo_loss_type": DPO_LOSS_TYPES,
    "feedback_monitor": ("val_rouge_l", "val_bleu", "val_reward", "val_perplexity"),
}
# The values each monitored metric can take (a target outside is never met).
_MONITOR_RANGES = {
    "val_rouge_l": (0.0, 1.0),
    "val_bleu": (0.0, 100.0),
    "val_reward": (-math.inf, math.inf),
    "val_perplexity": (1.0, math.inf),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; every field can be set in the YAML file.

    Args:
        name: str. Run name; outputs go to `runs/<name>/` unless `output` is set.
        output: str or None. Run directory. Defaults to `runs/<name>`.
        corpus: str. The corpus when `data` is not set: `"chatterbot"` (the
            embedded chatterbot corpus, 1,243 distinct English pairs or the
            Chinese one, see `language`) or `"chitchat"` (the Chit-Chat
            Challenge corpus of the `chitchat-dataset` package: consecutive
            turns of 7,168 conversations, `corpus_pairs` of them; see
            `keras_selffb.data.load_chitchat`).
        language: str. Language of the chatterbot corpus, `"en"` or `"zh"`
            (chitchat is English only).
        corpus_pairs: int. `"chitchat"`: the pairs taken (whole
            conversations in an order shuffled by `seed`), each side at most
            `response_length - 1` characters. Not used otherwise.
        data: str or None. A .txt/.jsonl/.json/.tsv file used instead of the
            corpus (see `keras_selffb.data.load_pairs`).
        tokenizer: str. `"char"` (lossless, exportable with core TF) or
            `"wordpiece"`.
        vocabulary_size: int or None. Cap on the vocabulary (None: every
            character for `char`, 8000 for `wordpiece`).
        prompt_length: int. Prompt columns incl. BOS and SEP; longer prompts
            keep their last tokens (with a warning).
        response_length: int. Response columns incl. EOS; longer responses
            are cut (with a warning).
        model: str. The policy: `"lstm"` (the article's character LSTM,
            `PolicyNetwork`), or a keras-hub transformer trained from scratch
            with the run's tokenizer: `"gpt2"` or `"llama"`
            (`keras_selffb.models.causal_lm_policy`; see docs/models.md).
        preset: str or None. A keras-hub preset directory on disk (what
            `keras_hub.models.CausalLM.from_preset` downloads, or what
            `save_to_preset` writes): its pretrained model is the policy
            and its own tokenizer the run's (`tokenizer`,
            `vocabulary_size`, `model` and the sizes are then not used).
            With `lora_rank`, MLE already trains LoRA only and merges it
            into the weights at its end; the rounds train a fresh LoRA
            against the MLE model. See docs/models.md.
        embedding_dim, hidden_dim, num_layers, dropout: policy size. The
            transformers use `hidden_dim` (model width) and `num_layers`
            (blocks); `embedding_dim` and `dropout` are LSTM-only (a
            transformer policy has dropout 0), and their context is
            `prompt_length + response_length` positions.
        num_heads: int. Attention heads of a transformer policy;
            `hidden_dim` must be divisible by it. Not used by the LSTM.
        lora_rank: int. 0 (default): every weight trains. Above 0 (transformers
            only): `policy.enable_lora(lora_rank)` before training, so in
            every stage (MLE, the rounds, the contrastive stage) only the LoRA
            weights train, and the KL reference is the same model with LoRA
            switched off (`policy.reference()`, no copy of the weights).
        batch_size: int. Global batch size.
        epochs: int. Most MLE epochs.
        patience: int. Stop MLE after this many epochs without a better
            validation perplexity, keeping the best epoch's weights.
        learning_rate: float. Adam learning rate.
        seed: int. Seeds the split, the weights, shuffling and sampling.
        deduplicate: bool. Drop exact duplicate (prompt, response) pairs
            before splitting (the embedded English corpus repeats some
            pairs over 100 times).
        validation_fraction, test_fraction: float. Split by prompt (lines
            with an empty prompt one by one; see `keras_selffb.data.split_pairs`).
            The validation split must not be empty.
        num_samples: int. Validation prompts shown with replies at the end
            (at least 1).
        sampler: str. Sampler for the sample replies: `"greedy"`, `"top_k"`,
            `"top_p"`, `"random"` or `"beam"`.
        feedback_rounds: int. Self-feedback rounds after MLE (0 skips them;
            see `keras_selffb.SelfFeedbackLoop`).
        feedback_methods: str. Comma-separated adjust methods run in every
            round, in order: `"rl"`, `"filtered"` (filtered self-training,
            ReST/RAFT), `"contrastive"`, `"dpo"` (online DPO on the best and
            worst of each prompt's `rl_samples` candidates; docs/preference.md).
        feedback_monitor: str. Validation metric for the target:
            `"val_rouge_l"`, `"val_bleu"`, `"val_reward"` or `"val_perplexity"`.
        feedback_target: float or None. Stop the rounds once the monitored
            metric reaches it.
        filter_quantile: float. `"filtered"`: round 1 keeps candidates at or
            above this quantile of its rewards ...
        filter_quantile_step: float. ... and each later round raises it by
            this much (the threshold never falls).
        filter_epochs: int. `"filtered"`: fine-tuning epochs per round.
        filter_learning_rate: float. `"filtered"`: Adam learning rate.
        rl_steps: int. Policy-gradient (or contrastive, or DPO) steps per round.
        rl_reward: str. `"composite"`: the weighted sum of ROUGE-L against
            the reference, the learned judge's relevance, informativeness and
            fluency (weights `reward_rouge_l`, `reward_judge`,
            `reward_informativeness`, `reward_fluency`; each logged on its
            own); `"rouge_l"`, `"bleu"`, `"chrf"` (against the reference;
            chrF suits translation, docs/translation.md) or `"article"`
            (fluency + overlap relevance + informativeness).
        reward_rouge_l, reward_judge, reward_informativeness, reward_fluency,
        reward_novelty: float. Weights of the `"composite"` reward's terms
            (0 leaves a term out). `reward_novelty` weighs `NoveltyReward`:
            the share of a reply's word bigrams that the batch's replies to
            other prompts do not use. See docs/dialogue-quality.md for how
            they were chosen.
        judge_epochs: int. Epochs of the relevance judge (a dual-encoder
            `RelevanceJudge` trained on the training split, starting from
            the MLE policy's encoder, saved as `judge.keras`); it gives the composite reward's relevance term
            and every evaluation's `judge_retrieval_accuracy`. 0: no judge
            (then `reward_judge` must be 0).
        feedback_min_distinct: float. Collapse guard: a round whose number
            of distinct greedy validation replies falls below this fraction
            of the MLE policy's ends the rounds, and the policy goes back to
            the best round (by `feedback_monitor`) that kept enough distinct
            replies. 0 turns the guard off.
        feedback_keep_best: bool. After the rounds, keep the policy of the
            best round by `feedback_monitor` (round 0: the MLE policy),
            rather than the last round's (a collapsed round is never kept).
        rl_samples: int. Candidates per prompt (K).
        rl_batch_size: int. Prompts per RL step.
        rl_learning_rate: float. Adam learning rate of the RL stage.
        rl_baseline: str. `"rloo"`, `"group_mean"`, `"self_critical"`,
            `"moving_average"` or `"none"`.
        rl_kl_coef: float. KL penalty to the MLE policy (k3 estimator).
        rl_gamma: float. Weight of the RL loss; `1 - rl_gamma` keeps MLE on
            the references so perplexity does not blow up.
        rl_temperature: float. Sampling temperature of the candidates.
        rl_include_greedy: bool. The last of the `rl_samples` candidates of
            every prompt is its greedy decode, which then gets an advantage
            of its own (see `ReinforceTrainer(include_greedy=...)`): on the
            embedded corpus this is what raised greedy validation ROUGE-L
            (docs/reinforce.md). Not with `rl_baseline: self_critical`.
        dpo_beta: float. `"dpo"`: inverse temperature of the implicit reward
            (TRL's `beta`); larger keeps the policy closer to the MLE policy.
        dpo_loss_type: str. `"dpo"`: `"sigmoid"` (DPO) or `"ipo"`.
        strategy: str. `"default"` (one device), `"mirrored"` (all GPUs of
            this machine) or `"multi_worker"` (the cluster in `TF_CONFIG`);
            see docs/distributed.md. `batch_size` and `rl_batch_size` are
            global batch sizes.
        contrastive_epochs: int. Epochs of the contrastive stage after RL
            (0, the default, skips it; see docs/contrastive.md).
        contrastive_mode: str. `"sequence_likelihood"` (trains the policy,
            BRIO-style) or `"encoder"` (trains an `LLMEncoder` reranker).
    """

    name: str = "default"
    output: str | None = None
    corpus: str = "chatterbot"
    language: str = "en"
    corpus_pairs: int = 20000
    data: str | None = None
    tokenizer: str = "char"
    vocabulary_size: int | None = None
    prompt_length: int = 48
    response_length: int = 80
    model: str = "lstm"
    preset: str | None = None
    embedding_dim: int = 64
    hidden_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.1
    num_heads: int = 4
    lora_rank: int = 0
    batch_size: int = 32
    epochs: int = 15
    patience: int = 2
    learning_rate: float = 3e-3
    seed: int = 0
    deduplicate: bool = True
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    num_samples: int = 5
    sampler: str = "greedy"
    feedback_rounds: int = 3
    feedback_methods: str = "rl"
    feedback_monitor: str = "val_rouge_l"
    feedback_target: float | None = None
    filter_quantile: float = 0.5
    filter_quantile_step: float = 0.1
    filter_epochs: int = 1
    filter_learning_rate: float = 1e-3
    rl_steps: int = 35
    rl_reward: str = "composite"
    reward_rouge_l: float = 1.0
    reward_judge: float = 1.0
    reward_informativeness: float = 0.2
    reward_fluency: float = 0.2
    reward_novelty: float = 0.2
    judge_epochs: int = 10
    feedback_min_distinct: float = 0.5
    feedback_keep_best: bool = True
    rl_samples: int = 4
    rl_batch_size: int = 16
    rl_learning_rate: float = 5e-4
    rl_baseline: str = "rloo"
    rl_kl_coef: float = 0.05
    rl_gamma: float = 0.9
    rl_temperature: float = 1.0
    rl_include_greedy: bool = True
    dpo_beta: float = 0.1
    dpo_loss_type: str = "sigmoid"
    strategy: str = "default"
    contrastive_epochs: int = 0
    contrastive_mode: str = "sequence_likelihood"

    @property
    def run_dir(self):
        return self.output or os.path.join("runs", self.name)

    def __post_init__(self):
        self._check_types()
        self._check_paths()
        self._check_choices()
        self._check_numbers()
        self._check_combinations()

    def _check_types(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = _base_types(field.type)
            if value is None and type(None) in expected:
                continue
            if float in expected and isinstance(value, str):
                # YAML 1.1 (PyYAML) reads `1e-3` as the string "1e-3".
                try:
                    value = float(value)
                except ValueError:
                    pass
                else:
                    object.__setattr__(self, field.name, value)
            if isinstance(value, bool) and bool not in expected:
                raise ValueError(f"Config field {field.name!r} must be {_type_name(expected)}, got {value!r}.")
            if float in expected and isinstance(value, int):
                value = float(value)
                object.__setattr__(self, field.name, value)
            if not isinstance(value, expected):
                raise ValueError(
                    f"Config field {field.name!r} must be {_type_name(expected)}, got "
                    f"{value!r} ({type(value).__name__})."
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"Config field {field.name!r} must be a finite number, got {value!r}.")

    def _check_paths(self):
        name = self.name
        if not name or name.strip() != name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError(
                "Config field 'name' must be a plain name (not empty, '.' or '..', no '/', '\\', NUL "
                f"or surrounding spaces; set 'output' for a directory path), got {name!r}."
            )
        if self.output is not None and (not self.output.strip() or "\0" in self.output):
            raise ValueError(f"Config field 'output' must be a directory path or null, got {self.output!r}.")
        if self.data is not None:
            extension = os.path.splitext(self.data)[1].lower()
            if not self.data.strip() or "\0" in self.data or extension not in DATA_EXTENSIONS:
                raise ValueError(
                    f"Config field 'data' must be null (the embedded corpus) or a file path ending in "
                    f"one of {list(DATA_EXTENSIONS)}, got {self.data!r}."
                )

    def _check_choices(self):
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"Config field {name!r} must be one of {list(allowed)}, got {value!r}.")
        methods = [m.strip() for m in self.feedback_methods.split(",")]
        if any(m not in METHODS for m in methods):
            raise ValueError(
                f"Config field 'feedback_methods' must list 'rl', 'filtered', 'contrastive' and/or 'dpo' "
                f"(comma-separated), got {self.feedback_methods!r}."
            )

    def _check_numbers(self):
        at_least = {
            "prompt_length": 3,  # BOS, a token, SEP
            "response_length": 2,  # a token, EOS
            "embedding_dim": 1, "hidden_dim": 1, "num_layers": 1, "batch_size": 1, "epochs": 1,
            "patience": 1, "num_samples": 1, "filter_epochs": 1, "rl_samples": 1, "rl_batch_size": 1,
            "feedback_rounds": 0, "rl_steps": 0, "contrastive_epochs": 0, "num_heads": 1, "lora_rank": 0,
            "corpus_pairs": 1, "judge_epochs": 0,
        }
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"Config field {name!r} must be >= {low}, got {getattr(self, name)!r}.")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"Config field 'seed' must be in [0, 2**32 - 1], got {self.seed!r}.")
        if self.vocabulary_size is not None and self.vocabulary_size <= NUM_RESERVED_TOKENS:
            raise ValueError(
                f"Config field 'vocabulary_size' must be null or > {NUM_RESERVED_TOKENS} (the reserved "
                f"tokens PAD, BOS, EOS, UNK, SEP take {NUM_RESERVED_TOKENS} ids), got {self.vocabulary_size!r}."
            )
        for name in ("learning_rate", "filter_learning_rate", "rl_learning_rate", "rl_temperature", "dpo_beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Config field {name!r} must be > 0, got {getattr(self, name)!r}.")
        for name in ("filter_quantile_step", "rl_kl_coef", "test_fraction"):
            if getattr(self, name) < 0:
                raise ValueError(f"Config field {name!r} must be >= 0, got {getattr(self, name)!r}.")
        for name in ("filter_quantile", "rl_gamma", "feedback_min_distinct"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Config field {name!r} must be in [0, 1], got {getattr(self, name)!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Config field 'dropout' must be in [0, 1), got {self.dropout!r}.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                "Config field 'validation_fraction' must be in (0, 1) (the validation split picks the "
                f"best MLE epoch), got {self.validation_fraction!r}."
            )
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "Config fields 'validation_fraction' and 'test_fraction' must sum to less than 1 (the "
                f"rest is the training split), got {self.validation_fraction!r} + {self.test_fraction!r}."
            )
        low, high = _MONITOR_RANGES[self.feedback_monitor]
        target = self.feedback_target
        if target is not None and not low <= target <= high:
            raise ValueError(
                f"Config field 'feedback_target' must be in [{low}, {high}] for feedback_monitor "
                f"{self.feedback_monitor!r}, got {target!r}."
            )

    def _check_combinations(self):
        if self.corpus == "chitchat" and self.language != "en":
            raise ValueError(
                f"Config field 'language' must be 'en' for corpus 'chitchat' (an English corpus; the "
                f"Chinese one is corpus 'chatterbot'), got {self.language!r}."
            )
        if self.rl_reward == "composite":
            weights = {name: getattr(self, name) for name in COMPOSITE_WEIGHTS}
            if not any(weights.values()):
                raise ValueError(
                    f"Config field 'rl_reward' is 'composite' but all its weights are 0 ({weights}); give one "
                    "a weight other than 0."
                )
            if self.reward_judge and not self.judge_epochs:
                raise ValueError(
                    f"Config field 'reward_judge' ({self.reward_judge}) needs the judge: set judge_epochs "
                    "> 0, or reward_judge: 0."
                )
        if self.model != "lstm" and self.hidden_dim % self.num_heads:
            raise ValueError(
                f"Config field 'num_heads' must divide hidden_dim ({self.hidden_dim}) for model "
                f"{self.model!r} (each head gets hidden_dim / num_heads dimensions), got {self.num_heads}."
            )
        if self.preset is not None:
            if not self.preset.strip():
                raise ValueError("Config field 'preset' must be a keras-hub preset directory, got an empty string.")
            if self.model != "lstm":
                raise ValueError(
                    f"Config fields 'preset' and 'model' exclude each other: the preset {self.preset!r} brings "
                    f"its own model; drop model {self.model!r} (or the preset)."
                )
            if self.tokenizer != "char" or self.vocabulary_size is not None:
                raise ValueError(
                    f"Config field 'preset' ({self.preset!r}) brings the preset's own tokenizer: drop "
                    "'tokenizer' and 'vocabulary_size'."
                )
        if self.model == "lstm" and self.lora_rank and self.preset is None:
            raise ValueError(
                f"Config field 'lora_rank' must be 0 for model 'lstm' (LoRA is for the transformer "
                f"policies: model 'gpt2' or 'llama'), got {self.lora_rank}."
            )
        methods = {m.strip() for m in self.feedback_methods.split(",")} if self.feedback_rounds else set()
        if self.rl_steps < 1 and methods & {"rl", "contrastive", "dpo"}:
            raise ValueError(
                f"Config field 'rl_steps' must be >= 1 for the 'rl'/'contrastive'/'dpo' methods, "
                f"got {self.rl_steps}."
            )
        if "rl" in methods and self.rl_include_greedy and (
            self.rl_baseline == "self_critical" or self.rl_samples < 2
        ):
            raise ValueError(
                "Config field 'rl_include_greedy' needs rl_samples >= 2 and an rl_baseline other than "
                f"'self_critical' (got rl_samples={self.rl_samples}, rl_baseline={self.rl_baseline!r}); "
                "set rl_include_greedy: false to use them."
            )
        if self.rl_samples < 2 and (
            ("rl" in methods and self.rl_baseline in ("rloo", "group_mean")) or methods & {"contrastive", "dpo"}
        ):
            need = next((f"the {m!r} method" for m in ("contrastive", "dpo") if m in methods),
                        f"rl_baseline {self.rl_baseline!r}")
            raise ValueError(f"Config field 'rl_samples' must be >= 2 for {need}, got {self.rl_samples}.")

    @classmethod
    def from_yaml(cls, path, **overrides):
        """Reads a YAML mapping of field names; `overrides` win over the file."""
        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"Config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"Config file {path} is not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"Config file {path} must hold a mapping of settings, not {type(values).__name__}.")
        return cls.from_dict({**values, **overrides}, source=path)

    @classmethod
    def from_dict(cls, values, source="config"):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; valid settings are {sorted(known)}.")
        return cls(**values)

    def to_dict(self):
        return dataclasses.asdict(self)


def _base_types(annotation):
    """`str | None` -> `(str, NoneType)`; `int` -> `(int,)`."""
    return typing.get_args(annotation) or (annotation,)


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def _type_name(types):
    """`(float, NoneType)` -> `"a number or null"`."""
    return " or ".join(_TYPE_NAMES.get(t, getattr(t, "__name__", str(t))) for t in types)
