"""Benchmark against TRL: one GRPO step and one DPO step on the same tiny GPT-2.

Both sides train the same randomly initialised GPT-2 on CPU in float32: a
keras-hub `GPT2CausalLM` behind `CausalLMPolicy` here, a
`transformers.GPT2LMHeadModel` in TRL, with our initial weights copied into
it (the script checks that the two give the same logits). The vocabulary is
shared too: a word-level `PreTrainedTokenizerFast` whose ids are ours (PAD,
BOS, EOS, UNK, SEP = 0..4, then `w0 w1 ...`), so both sides see the same
prompt ids and score replies with the same reward.

What one step is, on both sides:

- GRPO: `--prompts` prompts x `--group` completions of up to
  `--completion-length` tokens sampled (temperature 1, no top-k/top-p),
  scored by the same cheap reward, group-scaled advantages, ONE optimizer
  update (Adam, lr `--lr`, global gradient-norm clip 1.0) over all of them,
  token terms averaged over the batch's tokens (`loss_type="dapo"`, TRL's
  default). Ours: `ReinforceTrainer(num_samples=K, baseline="group_mean",
  scale_rewards="group", loss_type="dapo", num_iterations=1)` (and
  `jit_compile_sampling=True` with `--jit-compile-sampling`) through
  `trainer.fit` on packed rows, batch = the prompts. TRL: `GRPOTrainer`
  with `per_device_train_batch_size = prompts x K` (TRL counts
  completions), `num_generations=K`, `num_iterations=1`,
  `gradient_accumulation_steps=1`, `gradient_checkpointing=False` and
  `bf16=False` (TRL defaults to True for both), constant LR. The row
  "GRPO + KL" adds a frozen reference model on both sides (TRL `beta`,
  ours `kl_coef`, both the k3 estimator). The advantage is TRL's
  `(r - mean(group)) / (std(group) + 1e-4)` on both sides. What still
  differs: our sampler never draws PAD, BOS, SEP or UNK, TRL's may (a
  vocabulary of 512: no effect on the work done). Same FLOPs either way.
- DPO: `--dpo-batch` (prompt, chosen, rejected) triples with replies of
  `--completion-length` tokens, `beta`, the sigmoid loss, a frozen copy of
  the initial policy as reference on both sides; one forward of the policy
  and one of the reference over [chosen; rejected], one update. Ours:
  `DPOTrainer`; TRL: `DPOTrainer(ref_model=copy)`.

Timing: after a warm-up (our first step traces the graph), the two sides
run alternating blocks of `--steps` + 1 steps for `--rounds` rounds (the
order flips every round); a step is the time between two consecutive
end-of-step callbacks (Keras `on_train_batch_end`, transformers
`on_step_end`), so it covers everything the training loop does per step,
and the first step of every block is dropped. Both sides get `--threads`
CPU threads (default 1, see `BenchConfig.threads`). Reported: median and
best seconds per step, tokens/s and the ratio TRL / ours (> 1: we are
faster). A profile splits each GRPO step into generation, reward and update.

    pip install -e ".[bench]"
    python benchmarks/vs_trl.py            # the full default setting
    python benchmarks/vs_trl.py --quick    # a smaller check, under 3 minutes

Writes `benchmarks/results/vs_trl.json` (`--output` to change; the
library-default threads and `--jit-compile-sampling` runs of
docs/benchmarks.md are stored next to it). Not part of the test suite.
"""

import argparse
import copy
import dataclasses
import inspect
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import datasets
    import torch
    import transformers
    import trl
    from tokenizers import Tokenizer, models, pre_tokenizers
except ImportError as error:  # an optional dependency: say how to get it
    raise SystemExit(f"{error}. This benchmark needs TRL: pip install -e \".[bench]\" (torch, transformers, trl).")
# torch's compiler stack (loaded lazily by transformers and TRL) must be in
# the process before TensorFlow: loading triton after TF segfaults (their
# LLVM copies clash), so the lazy modules are resolved here, first.
_ = (transformers.GPT2LMHeadModel, trl.GRPOTrainer, trl.DPOTrainer)

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_selffb.models import causal_lm_policy  # noqa: E402
from keras_selffb.rewards.base import Reward, content_mask  # noqa: E402
from keras_selffb.text.tokenizer import BOS_ID, EOS_ID, NUM_RESERVED, RESERVED_TOKENS, SEP_ID  # noqa: E402
from keras_selffb.training import ReinforceTrainer  # noqa: E402
from step_profile import median, step_parts, time_call  # noqa: E402  (benchmarks/, beside this script)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """The setting compared; the same on both sides."""

    layers: int = 2
    heads: int = 2
    width: int = 64
    vocab: int = 512
    prompt_length: int = 16
    completion_length: int = 32
    group: int = 4
    prompts: int = 8
    dpo_batch: int = 16
    dpo_beta: float = 0.1
    kl_beta: float = 0.04
    lr: float = 1e-5
    warmup: int = 3
    steps: int = 10
    rounds: int = 6
    profile_repeats: int = 10
    # One thread per side by default: on a shared 2-core CPU, torch's OpenMP
    # pool with 2 threads made TRL's generation 30-60x slower under load
    # (measured: 0.16 s vs ~9 s a step at load average 4-5), which would
    # flatter us. On a quiet machine 2 threads help TRL and not us: run
    # `--threads 0` too (docs/benchmarks.md reports both).
    threads: int = 1
    # Ours: `ReinforceTrainer(jit_compile_sampling=True)`, the decoding loop
    # compiled with XLA (the rest of the step stays a plain graph; Keras
    # leaves XLA off on CPU). Off is the trainer's default; the table in
    # docs/benchmarks.md has both.
    jit_compile_sampling: bool = False
    seed: int = 0


QUICK = dict(steps=3, rounds=2, warmup=1, profile_repeats=3, kl_beta=0.0)


# -- the shared model and vocabulary ---------------------------------------------


def word_tokenizer(vocab_size):
    """A word-level HF tokenizer whose ids are ours: reserved tokens 0..4, then `w0 w1 ...`."""
    words = list(RESERVED_TOKENS) + [f"w{i}" for i in range(vocab_size - NUM_RESERVED)]
    model = models.WordLevel({word: i for i, word in enumerate(words)}, unk_token=RESERVED_TOKENS[3])
    backend = Tokenizer(model)
    # Split on spaces only, so "[EOS]" stays one token.
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    pad, bos, eos, unk, _ = RESERVED_TOKENS
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk,
        padding_side="left", truncation_side="left",
    )
    return tokenizer, words


def hf_twin(policy, config):
    """A `GPT2LMHeadModel` with `policy`'s architecture and weights (dropout 0, float32)."""
    hf_config = transformers.GPT2Config(
        vocab_size=config.vocab, n_positions=config.prompt_length + config.completion_length,
        n_embd=config.width, n_layer=config.layers, n_head=config.heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(hf_config)
    weights = {w.path: np.asarray(w.numpy()) for w in policy.backbone.weights}
    width = config.width
    state = {
        "transformer.wte.weight": weights["token_embedding/embeddings"],
        "lm_head.weight": weights["token_embedding/embeddings"],  # tied, as in keras-hub
        "transformer.wpe.weight": weights["position_embedding/embeddings"],
        "transformer.ln_f.weight": weights["layer_norm/gamma"],
        "transformer.ln_f.bias": weights["layer_norm/beta"],
    }
    for i in range(config.layers):
        ours, theirs = f"transformer_layer_{i}/", f"transformer.h.{i}."
        attention = ours + "self_attention/"
        # keras-hub keeps q, k, v as (width, heads, head_dim) kernels; GPT-2's
        # Conv1D holds them side by side as one (width, 3 * width) matrix.
        qkv = [weights[f"{attention}{name}/kernel"].reshape(width, width) for name in ("query", "key", "value")]
        qkv_bias = [weights[f"{attention}{name}/bias"].reshape(width) for name in ("query", "key", "value")]
        state.update({
            theirs + "attn.c_attn.weight": np.concatenate(qkv, axis=1),
            theirs + "attn.c_attn.bias": np.concatenate(qkv_bias),
            theirs + "attn.c_proj.weight": weights[attention + "attention_output/kernel"].reshape(width, width),
            theirs + "attn.c_proj.bias": weights[attention + "attention_output/bias"],
            theirs + "ln_1.weight": weights[ours + "self_attention_layer_norm/gamma"],
            theirs + "ln_1.bias": weights[ours + "self_attention_layer_norm/beta"],
            theirs + "ln_2.weight": weights[ours + "feedforward_layer_norm/gamma"],
            theirs + "ln_2.bias": weights[ours + "feedforward_layer_norm/beta"],
            theirs + "mlp.c_fc.weight": weights[ours + "feedforward_intermediate_dense/kernel"],
            theirs + "mlp.c_fc.bias": weights[ours + "feedforward_intermediate_dense/bias"],
            theirs + "mlp.c_proj.weight": weights[ours + "feedforward_output_dense/kernel"],
            theirs + "mlp.c_proj.bias": weights[ours + "feedforward_output_dense/bias"],
        })
    model.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    return model.float().eval()


def build_pair(config, directory):
    """Our policy and its HF twin saved under `directory`; the largest logit difference."""
    policy = causal_lm_policy(
        "gpt2", config.vocab, num_layers=config.layers, hidden_dim=config.width, num_heads=config.heads,
        max_sequence_length=config.prompt_length + config.completion_length, seed=config.seed,
    )
    rows = prompt_rows(config, 4, seed=config.seed + 99)
    ours = np.asarray(policy(rows))
    model = hf_twin(policy, config)
    with torch.no_grad():
        theirs = model(torch.tensor(rows, dtype=torch.long)).logits.numpy()
    model.save_pretrained(directory)
    return policy, model, float(np.max(np.abs(ours - theirs)))


# -- data and reward -------------------------------------------------------------


def content_ids(config, rows, columns, rng):
    return rng.integers(NUM_RESERVED, config.vocab, size=(rows, columns), dtype=np.int32)


def prompt_rows(config, rows, seed):
    """Full-length prompts `[BOS w.. SEP]` (no padding: the same ids on both sides)."""
    rng = np.random.default_rng(seed)
    body = content_ids(config, rows, config.prompt_length - 2, rng)
    return np.concatenate([np.full((rows, 1), BOS_ID), body, np.full((rows, 1), SEP_ID)], axis=1).astype(np.int32)


def reply_rows(config, rows, rng):
    """Full-length replies `w.. EOS`."""
    body = content_ids(config, rows, config.completion_length - 1, rng)
    return np.concatenate([body, np.full((rows, 1), EOS_ID)], axis=1).astype(np.int32)


def as_text(words, ids):
    return " ".join(words[i] for i in ids)


class EvenTokenReward(Reward):
    """Share of the reply's columns holding an even text id (ours; cheap, in the graph)."""

    default_name = "even_tokens"

    def __init__(self, max_new_tokens, name=None):
        super().__init__(name)
        self.max_new_tokens = max_new_tokens

    def call(self, prompts, candidates, references):
        hits = content_mask(candidates) & tf.equal(candidates % 2, 0)
        return tf.reduce_sum(tf.cast(hits, tf.float32), axis=1) / self.max_new_tokens


class EvenTokenRewardTRL:
    """The same reward as a TRL reward function (on `completion_ids`)."""

    def __init__(self, max_new_tokens):
        self.max_new_tokens = max_new_tokens
        self.__name__ = "even_tokens"

    def __call__(self, completion_ids, **kwargs):
        return [sum(1 for t in ids if t >= NUM_RESERVED and t % 2 == 0) / self.max_new_tokens
                for ids in completion_ids]


# -- step timers -----------------------------------------------------------------


def step_seconds(ends):
    """Seconds per step from end-of-step times: the block's first step has no start and is dropped."""
    return [b - a for a, b in zip(ends, ends[1:])]


class KerasStepTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


class Stopwatch:
    """Wraps the method `name` of `owner` and sums the seconds spent in it."""

    def __init__(self, owner, name):
        self.total = 0.0
        method = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        setattr(owner, name, timed)


class TRLStepTimes(transformers.TrainerCallback):
    """End-of-step times, and each stopwatch's seconds within every step."""

    def __init__(self):
        self.ends, self.parts, self.watches = [], [], {}

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.parts.append({name: watch.total for name, watch in self.watches.items()})


# -- our side --------------------------------------------------------------------


def grpo_options(kl_beta):
    """Our ReinforceTrainer's settings matching TRL's GRPO defaults, where it has them (checked at run time)."""
    wanted = {"loss_type": "dapo", "scale_rewards": "group", "num_iterations": 1, "baseline": "group_mean"}
    params = inspect.signature(ReinforceTrainer).parameters
    applied = {k: v for k, v in wanted.items() if k in params}
    # TRL's k3 estimator and group-mean centring.
    options = {"baseline": "rloo", "kl_coef": kl_beta, "kl_estimator": "k3", **applied}
    return options, sorted(set(wanted) - set(applied))


def keras_fit_steps(trainer, rows, batch_size, steps):
    timer = KerasStepTimes()
    trainer.fit(rows[: steps * batch_size], batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
                callbacks=[timer])
    return step_seconds(timer.ends)


class OursGRPO:
    def __init__(self, policy, config, kl_beta):
        self.config = config
        self.options, self.missing_options = grpo_options(kl_beta)
        self.trainer = ReinforceTrainer(
            policy, EvenTokenReward(config.completion_length), config.prompt_length, config.completion_length,
            num_samples=config.group, seed=config.seed, jit_compile_sampling=config.jit_compile_sampling,
            **self.options,
        )
        self.trainer.compile(optimizer=keras.optimizers.Adam(config.lr, global_clipnorm=1.0))
        rng = np.random.default_rng(config.seed + 1)
        prompts = prompt_rows(config, (config.steps + 1) * config.prompts, seed=config.seed + 1)
        self.rows = np.concatenate([prompts, reply_rows(config, len(prompts), rng)], axis=1)

    def run(self, steps):
        return keras_fit_steps(self.trainer, self.rows, self.config.prompts, steps)

    def profile(self):
        """Median seconds of generation, reward and update, each its own compiled function (as rl_step.py).

        Measured after the comparison, not interleaved with TRL: compare the
        shares, and `train_step_without_fit` with the fit step's median.
        """
        trainer, config = self.trainer, self.config
        batch = tf.constant(self.rows[: config.prompts])
        parts, _ = step_parts(trainer, batch)
        # The whole train_step compiled on its own: the step without Keras' fit loop around it.
        parts["train_step_without_fit"] = tf.function(lambda: trainer.train_step(batch))
        names = {"sampling": "generation", "scoring": "reward"}
        return {names.get(name, name): time_call(fn, config.profile_repeats, median)
                for name, fn in parts.items()}


class OursDPO:
    def __init__(self, policy, config, rows):
        from keras_selffb.training.dpo_trainer import DPOTrainer

        self.config, self.rows = config, rows
        # reference_policy=None: a frozen copy of the policy taken now.
        self.trainer = DPOTrainer(policy, config.prompt_length, config.completion_length, beta=config.dpo_beta,
                                  loss_type="sigmoid")
        self.trainer.compile(optimizer=keras.optimizers.Adam(config.lr, global_clipnorm=1.0))

    def run(self, steps):
        return keras_fit_steps(self.trainer, self.rows, self.config.dpo_batch, steps)


# -- TRL's side ------------------------------------------------------------------


def common_args(config, directory):
    """TrainingArguments shared by both TRL trainers: CPU, float32, no checkpointing, logging or saving."""
    return dict(
        output_dir=directory, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        learning_rate=config.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, gradient_accumulation_steps=1, logging_strategy="no", save_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, seed=config.seed, max_steps=1,
    )


class TRLSteps:
    """Runs a TRL trainer for a number of steps (one `train()` call), timing each step."""

    def run(self, steps):
        self.trainer.args.max_steps = steps
        self.timer.ends, self.timer.parts = [], []
        self.trainer.train()
        parts = self.timer.parts
        self.step_parts.extend({k: b[k] - a[k] for k in b} for a, b in zip(parts, parts[1:]))
        return step_seconds(self.timer.ends)


class TRLGRPO(TRLSteps):
    def __init__(self, model_dir, tokenizer, words, config, kl_beta, directory):
        self.timer, self.step_parts = TRLStepTimes(), []
        prompts = prompt_rows(config, (config.steps + 1) * config.prompts, seed=config.seed + 1)
        dataset = datasets.Dataset.from_dict({"prompt": [as_text(words, row) for row in prompts]})
        args = trl.GRPOConfig(
            **common_args(config, directory),
            per_device_train_batch_size=config.prompts * config.group,  # TRL counts completions
            num_generations=config.group, max_completion_length=config.completion_length,
            num_iterations=1, beta=kl_beta, temperature=1.0, top_p=1.0, top_k=0,
            loss_type="dapo", scale_rewards="group", shuffle_dataset=False,
            model_init_kwargs={"dtype": torch.float32},
        )
        # A path, not a model object: with beta > 0 TRL loads its reference from the model's path.
        self.settings = {key: getattr(args, key) for key in (
            "per_device_train_batch_size", "num_generations", "max_completion_length", "num_iterations",
            "beta", "loss_type", "scale_rewards", "epsilon", "temperature", "gradient_checkpointing", "bf16")}
        self.trainer = trl.GRPOTrainer(
            model=model_dir, reward_funcs=EvenTokenRewardTRL(config.completion_length), args=args,
            train_dataset=dataset, processing_class=tokenizer, callbacks=[self.timer],
        )
        self.timer.watches = {
            "rollout": Stopwatch(self.trainer, "_generate_and_score_completions"),
            "generation": Stopwatch(self.trainer, "_generate"),
            "reward": Stopwatch(self.trainer, "_calculate_rewards"),
        }

    def profile(self, step_median):
        """Median seconds of generation, reward, the rest of the rollout and the update, over the timed steps."""
        median = {k: statistics.median(p[k] for p in self.step_parts) for k in self.timer.watches}
        return {
            "generation": median["generation"],
            "reward": median["reward"],
            # padding, advantages, the reference model's log-probs (with KL), metrics
            "rollout_other": median["rollout"] - median["generation"] - median["reward"],
            # re-scoring pass, loss, backward, clip, AdamW, the Trainer loop
            "update": step_median - median["rollout"],
        }


class TRLDPO(TRLSteps):
    def __init__(self, model, tokenizer, words, config, rows, directory):
        self.timer, self.step_parts = TRLStepTimes(), []
        p, r = config.prompt_length, config.completion_length
        # Replies start with a space, so prompt + reply splits into the same words.
        dataset = datasets.Dataset.from_dict({
            "prompt": [as_text(words, row[:p]) for row in rows],
            "chosen": [" " + as_text(words, row[p:p + r]) for row in rows],
            "rejected": [" " + as_text(words, row[p + r:]) for row in rows],
        })
        args = trl.DPOConfig(
            **common_args(config, directory), per_device_train_batch_size=config.dpo_batch,
            beta=config.dpo_beta, loss_type=["sigmoid"], max_length=None, precompute_ref_log_probs=False,
        )
        self.trainer = trl.DPOTrainer(
            model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=dataset,
            processing_class=tokenizer, callbacks=[self.timer],
        )


def preference_rows(config, rows, seed):
    """Packed `[prompt | chosen | rejected]`, every reply full length."""
    rng = np.random.default_rng(seed)
    prompts = prompt_rows(config, rows, seed)
    return np.concatenate([prompts, reply_rows(config, rows, rng), reply_rows(config, rows, rng)], axis=1)


# -- comparison ------------------------------------------------------------------


def compare(ours, theirs, config):
    """Warm-up, then alternating blocks (the order flips each round); seconds per step of each side."""
    ours.run(config.warmup + 1)
    theirs.run(config.warmup + 1)
    theirs.step_parts.clear()
    times = {"ours": [], "trl": []}
    for round_index in range(config.rounds):
        sides = [("ours", ours), ("trl", theirs)]
        for name, side in sides if round_index % 2 == 0 else sides[::-1]:
            times[name].extend(side.run(config.steps + 1))
    return times


def summary(times, tokens):
    out = {"tokens_per_step": tokens}
    for side, values in times.items():
        median = statistics.median(values)
        out[side] = {"median_s": median, "best_s": min(values), "tokens_per_s": tokens / median,
                     "steps_s": values}
    out["ratio_trl_over_ours_median"] = out["trl"]["median_s"] / out["ours"]["median_s"]
    out["ratio_trl_over_ours_best"] = out["trl"]["best_s"] / out["ours"]["best_s"]
    return out


def dpo_trainer_missing():
    """Why our DPOTrainer cannot run (it was written alongside this benchmark), or None."""
    try:
        from keras_selffb.training import dpo_trainer
    except ImportError as error:
        return f"keras_selffb.training.dpo_trainer is not importable ({error})"
    return None if hasattr(dpo_trainer, "DPOTrainer") else "keras_selffb.training.dpo_trainer has no DPOTrainer"


def configure_threads(threads):
    """The same thread count on both sides; 0 keeps each library's default."""
    if threads:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run(config, output):
    configure_threads(config.threads)
    load_at_start = os.getloadavg()
    keras.utils.set_random_seed(config.seed)
    torch.manual_seed(config.seed)
    tokenizer, words = word_tokenizer(config.vocab)
    results = {"rows": {}, "profile": {}, "notes": []}
    k, n = config.group, config.completion_length
    with tempfile.TemporaryDirectory() as scratch:
        for kl_beta in [0.0] + ([config.kl_beta] if config.kl_beta > 0 else []):
            label = "GRPO" if kl_beta == 0 else f"GRPO + KL (beta={kl_beta})"
            label += " [ours: jit_compile_sampling]" if config.jit_compile_sampling else ""
            model_dir = os.path.join(scratch, f"grpo_{kl_beta}")
            policy, _, results["max_abs_logit_difference"] = build_pair(config, model_dir)
            ours = OursGRPO(policy, config, kl_beta)
            theirs = TRLGRPO(model_dir, tokenizer, words, config, kl_beta, os.path.join(scratch, "trl"))
            print(f"{label}: timing ...", flush=True)
            row = results["rows"][label] = summary(compare(ours, theirs, config), config.prompts * k * n)
            row["settings"] = {"ours": {**ours.options, "num_samples": k}, "trl": theirs.settings}
            if ours.missing_options:
                results["notes"].append(f"ReinforceTrainer lacks {ours.missing_options}: its defaults were used.")
            print(f"{label}: profiling ...", flush=True)
            results["profile"][label] = {"ours": ours.profile(), "trl": theirs.profile(row["trl"]["median_s"])}
            del ours, theirs

        missing = dpo_trainer_missing()
        if missing:
            results["notes"].append(f"DPO not run: {missing}.")
        else:
            label = f"DPO (beta={config.dpo_beta})"
            policy, model, _ = build_pair(config, os.path.join(scratch, "dpo"))
            rows = preference_rows(config, (config.steps + 1) * config.dpo_batch, seed=config.seed + 2)
            ours = OursDPO(policy, config, rows)
            theirs = TRLDPO(model, tokenizer, words, config, rows, os.path.join(scratch, "trl_dpo"))
            print(f"{label}: timing ...", flush=True)
            tokens = 2 * config.dpo_batch * (config.prompt_length + n)
            results["rows"][label] = summary(compare(ours, theirs, config), tokens)

    results["config"] = dataclasses.asdict(config)
    results["versions"] = {
        "tensorflow": tf.__version__, "keras": keras.__version__, "keras_hub": keras_hub.__version__,
        "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
        "python": platform.python_version(),
    }
    results["machine"] = {
        "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "threads_per_side": config.threads or "library defaults", "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "note": "CPU only, shared with other jobs: medians over alternating blocks",
    }
    print_table(results)
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {output}")
    return results


def print_table(results):
    width = max(len(label) for label in results["rows"]) + 2
    header = (f"{'step':<{width}}{'ours s/step':>16}{'TRL s/step':>16}{'TRL/ours':>10}"
              f"{'ours tok/s':>12}{'TRL tok/s':>11}")
    print("\n" + header + "\n" + "-" * len(header))
    for label, row in results["rows"].items():
        ours, theirs = row["ours"], row["trl"]
        print(f"{label:<{width}}{ours['median_s']:>8.3f} ({ours['best_s']:.3f}){theirs['median_s']:>8.3f} "
              f"({theirs['best_s']:.3f}){row['ratio_trl_over_ours_median']:>9.2f}x"
              f"{ours['tokens_per_s']:>12.0f}{theirs['tokens_per_s']:>11.0f}")
    print("median (best) seconds per step; tokens: completions x length (GRPO), "
          "2 x pairs x (prompt + reply) (DPO)")
    for label, sides in results["profile"].items():
        for side, parts in sides.items():
            print(f"{label} profile, {side}: " + ", ".join(f"{k} {v:.3f}s" for k, v in parts.items()))
    print(f"largest logit difference between the two models: {results['max_abs_logit_difference']:.1e}")
    for note in results["notes"]:
        print("note:", note)


HELP = {
    "layers": "transformer layers", "heads": "attention heads", "width": "model width",
    "vocab": "vocabulary size (ids 0..4 reserved)", "prompt_length": "prompt tokens, BOS and SEP included",
    "completion_length": "generated tokens (GRPO) and reply tokens (DPO), EOS included",
    "group": "completions per prompt K", "prompts": "prompts per GRPO step",
    "dpo_batch": "preference pairs per DPO step", "dpo_beta": "DPO beta",
    "kl_beta": "KL coefficient of the 'GRPO + KL' row (0: no such row)", "lr": "learning rate",
    "warmup": "untimed steps first", "steps": "timed steps per block", "rounds": "blocks per side",
    "profile_repeats": "repeats of each profiled part (ours)", "threads": "CPU threads per side (0: defaults)",
    "jit_compile_sampling": "ours: ReinforceTrainer(jit_compile_sampling=True), XLA decoding", "seed": "seed",
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    for field in dataclasses.fields(BenchConfig):
        default = getattr(defaults, field.name)
        flag, help_text = "--" + field.name.replace("_", "-"), f"{HELP[field.name]} (default {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=None, help=help_text)
    parser.add_argument("--quick", action="store_true", help=f"a smaller check: {QUICK}")
    parser.add_argument("--output", default="benchmarks/results/vs_trl.json")
    args = parser.parse_args()
    values = dict(QUICK) if args.quick else {}
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)
                   if getattr(args, f.name) is not None})
    return BenchConfig(**values), args.output


if __name__ == "__main__":
    run(*parse_args())
