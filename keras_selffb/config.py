"""`TrainConfig`: the typed, frozen settings of a `keras-selffb train` run.

The CLI and YAML files fill it; library code below the pipeline takes plain
keyword arguments. Unknown keys and wrong types are refused with a message
that names them.
"""

import dataclasses
import os
import typing

import yaml


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; every field can be set in the YAML file.

    Args:
        name: str. Run name; outputs go to `runs/<name>/` unless `output` is set.
        output: str or None. Run directory. Defaults to `runs/<name>`.
        language: str. Embedded corpus language, `"en"` or `"zh"`.
        data: str or None. A .txt/.jsonl/.tsv file used instead of the corpus.
        tokenizer: str. `"char"` (lossless, exportable with core TF) or
            `"wordpiece"`.
        vocabulary_size: int or None. Cap on the vocabulary (None: every
            character for `char`, 8000 for `wordpiece`).
        prompt_length: int. Prompt columns incl. BOS and SEP; longer prompts
            keep their last tokens (with a warning).
        response_length: int. Response columns incl. EOS; longer responses
            are cut (with a warning).
        embedding_dim, hidden_dim, num_layers, dropout: policy size.
        batch_size: int. Global batch size.
        epochs: int. Most MLE epochs.
        patience: int. Stop MLE after this many epochs without a better
            validation perplexity, keeping the best epoch's weights.
        learning_rate: float. Adam learning rate.
        seed: int. Seeds the split, the weights, shuffling and sampling.
        deduplicate: bool. Drop exact duplicate (prompt, response) pairs
            before splitting (the embedded English corpus repeats some
            pairs over 100 times).
        validation_fraction, test_fraction: float. Split by prompt.
        num_samples: int. Validation prompts shown with replies at the end.
        sampler: str. Sampler for the sample replies.
        feedback_rounds: int. Self-feedback rounds after MLE (0 skips them;
            see `keras_selffb.SelfFeedbackLoop`).
        feedback_methods: str. Comma-separated adjust methods run in every
            round, in order: `"rl"`, `"filtered"` (filtered self-training,
            ReST/RAFT), `"contrastive"`.
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
        rl_steps: int. Policy-gradient (or contrastive) steps per round.
        rl_reward: str. `"rouge_l"`, `"bleu"` (against the reference) or
            `"article"` (fluency + relevance + informativeness).
        rl_samples: int. Candidates per prompt (K).
        rl_batch_size: int. Prompts per RL step.
        rl_learning_rate: float. Adam learning rate of the RL stage.
        rl_baseline: str. `"rloo"`, `"self_critical"`, `"moving_average"`
            or `"none"`.
        rl_kl_coef: float. KL penalty to the MLE policy (k3 estimator).
        rl_gamma: float. Weight of the RL loss; `1 - rl_gamma` keeps MLE on
            the references so perplexity does not blow up.
        rl_temperature: float. Sampling temperature of the candidates.
        rl_include_greedy: bool. The last of the `rl_samples` candidates of
            every prompt is its greedy decode, which then gets an advantage
            of its own (see `ReinforceTrainer(include_greedy=...)`): on the
            embedded corpus this is what raised greedy validation ROUGE-L
            (docs/reinforce.md). Not with `rl_baseline: self_critical`.
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
    language: str = "en"
    data: str | None = None
    tokenizer: str = "char"
    vocabulary_size: int | None = None
    prompt_length: int = 48
    response_length: int = 80
    embedding_dim: int = 64
    hidden_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.1
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
    rl_reward: str = "rouge_l"
    rl_samples: int = 4
    rl_batch_size: int = 16
    rl_learning_rate: float = 5e-4
    rl_baseline: str = "rloo"
    rl_kl_coef: float = 0.05
    rl_gamma: float = 0.9
    rl_temperature: float = 1.0
    rl_include_greedy: bool = True
    strategy: str = "default"
    contrastive_epochs: int = 0
    contrastive_mode: str = "sequence_likelihood"

    @property
    def run_dir(self):
        return self.output or os.path.join("runs", self.name)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            expected = _base_types(field.type)
            if value is None and type(None) in expected:
                continue
            if isinstance(value, bool) and bool not in expected:
                raise ValueError(f"Config field {field.name!r} must be {field.type}, got {value!r}.")
            if float in expected and isinstance(value, int):
                object.__setattr__(self, field.name, float(value))
                continue
            if not isinstance(value, expected):
                raise ValueError(
                    f"Config field {field.name!r} must be {field.type}, got "
                    f"{value!r} ({type(value).__name__})."
                )
        positive = ("prompt_length", "response_length", "embedding_dim", "hidden_dim",
                    "num_layers", "batch_size", "epochs", "patience", "rl_samples", "rl_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"Config field {name!r} must be >= 1, got {getattr(self, name)}.")
        if self.language not in ("en", "zh"):
            raise ValueError(f"Config field 'language' must be 'en' or 'zh', got {self.language!r}.")
        if self.tokenizer not in ("char", "wordpiece"):
            raise ValueError(f"Config field 'tokenizer' must be 'char' or 'wordpiece', got {self.tokenizer!r}.")
        if self.rl_reward not in ("rouge_l", "bleu", "article"):
            raise ValueError(
                f"Config field 'rl_reward' must be 'rouge_l', 'bleu' or 'article', got {self.rl_reward!r}."
            )
        if self.contrastive_mode not in ("sequence_likelihood", "encoder"):
            raise ValueError(
                "Config field 'contrastive_mode' must be 'sequence_likelihood' or 'encoder', "
                f"got {self.contrastive_mode!r}."
            )
        if self.contrastive_epochs < 0:
            raise ValueError(f"Config field 'contrastive_epochs' must be >= 0, got {self.contrastive_epochs}.")
        methods = [m.strip() for m in self.feedback_methods.split(",")]
        bad = [m for m in methods if m not in ("rl", "filtered", "contrastive")]
        if bad or not methods:
            raise ValueError(
                f"Config field 'feedback_methods' must list 'rl', 'filtered' and/or 'contrastive' "
                f"(comma-separated), got {self.feedback_methods!r}."
            )
        monitors = ("val_rouge_l", "val_bleu", "val_reward", "val_perplexity")
        if self.feedback_monitor not in monitors:
            raise ValueError(f"Config field 'feedback_monitor' must be one of {monitors}, got {self.feedback_monitor!r}.")
        if self.feedback_rounds < 0:
            raise ValueError(f"Config field 'feedback_rounds' must be >= 0, got {self.feedback_rounds}.")
        if not 0.0 <= self.filter_quantile <= 1.0 or self.filter_quantile_step < 0:
            raise ValueError(
                "Config fields 'filter_quantile' (in [0, 1]) and 'filter_quantile_step' (>= 0) are out "
                f"of range: {self.filter_quantile}, {self.filter_quantile_step}."
            )
        if self.feedback_rounds and self.rl_steps < 1 and ({"rl", "contrastive"} & set(methods)):
            raise ValueError(
                f"Config field 'rl_steps' must be >= 1 for the 'rl'/'contrastive' methods, got {self.rl_steps}."
            )
        if self.filter_epochs < 1:
            raise ValueError(f"Config field 'filter_epochs' must be >= 1, got {self.filter_epochs}.")
        if self.strategy not in ("default", "mirrored", "multi_worker"):
            raise ValueError(
                f"Config field 'strategy' must be 'default', 'mirrored' or 'multi_worker', got {self.strategy!r}."
            )
        uses_rl = self.feedback_rounds > 0 and "rl" in methods
        if uses_rl and self.rl_include_greedy and (self.rl_baseline == "self_critical" or self.rl_samples < 2):
            raise ValueError(
                "Config field 'rl_include_greedy' needs rl_samples >= 2 and an rl_baseline other than "
                f"'self_critical' (got rl_samples={self.rl_samples}, rl_baseline={self.rl_baseline!r}); "
                "set rl_include_greedy: false to use them."
            )
        if self.rl_steps < 0:
            raise ValueError(f"Config field 'rl_steps' must be >= 0, got {self.rl_steps}.")
        if self.learning_rate <= 0:
            raise ValueError(f"Config field 'learning_rate' must be > 0, got {self.learning_rate}.")

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
