"""DPO: loss and gradient by hand, step 0, learning, packing and loading, replicas, the loop's "dpo"."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_selffb.data import load_preferences, pack_preferences
from keras_selffb.generator import ResponseGenerator
from keras_selffb.loop import SelfFeedbackLoop, preference_pairs
from keras_selffb.models import LoRAReference, PolicyNetwork, causal_lm_policy, frozen_copy
from keras_selffb.text import EOS_ID, PAD_ID, CharTokenizer
from keras_selffb.training import DPOTrainer, dpo_loss

from conftest import cpu_devices, mirrored_strategy
from test_loop import TOKENIZER as LOOP_TOKENIZER
from test_loop import TRAIN as LOOP_TRAIN
from test_loop import VALIDATION as LOOP_VALIDATION
from test_loop import ShareOfA, share_of_a_numpy

VOCAB = 12
P, R = 4, 4
# prompt (P) | chosen (R) | rejected (R); uneven reply lengths, so the
# global token and row counts matter.
BATCH = np.array(
    [
        [0, 1, 5, 4, 6, 7, 8, 2, 9, 2, 0, 0],
        [1, 5, 6, 4, 9, 2, 0, 0, 10, 11, 5, 2],
        [0, 0, 1, 4, 10, 11, 5, 2, 6, 2, 0, 0],
        [0, 1, 7, 4, 2, 0, 0, 0, 7, 7, 7, 2],
    ],
    dtype="int32",
)


def log_softmax(x):
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def numpy_sequence_logps(policy, batch):
    """Per-row log-probs of the chosen and rejected replies, and their token
    counts, from the policy's logits (NumPy); and d logp / d head-bias."""
    out = {}
    for name, replies in (("chosen", batch[:, P : P + R]), ("rejected", batch[:, P + R :])):
        inputs = np.concatenate([batch[:, :P], replies[:, :-1]], axis=1)
        logits = np.asarray(policy(inputs), np.float64)[:, -R:]
        logp = log_softmax(logits)
        mask = replies != PAD_ID
        token_logp = np.take_along_axis(logp, replies[..., None], axis=-1)[..., 0] * mask
        # d log p(y_t) / d bias = onehot(y_t) - softmax(z_t), on real tokens.
        grad = (np.eye(VOCAB)[replies] - np.exp(logp)) * mask[..., None]
        out[name] = (token_logp.sum(1), mask.sum(1), grad.sum(1))
    return out


def two_policies():
    policy = PolicyNetwork(VOCAB, 6, 6)
    reference = frozen_copy(policy)
    # The reference differs from the policy, so h != 0 at the start.
    reference.set_weights([w + np.random.default_rng(i).normal(0, 0.3, w.shape).astype("float32")
                           for i, w in enumerate(reference.get_weights())])
    return policy, reference


@pytest.mark.parametrize(
    "loss_type,label_smoothing",
    [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)],
)
def test_loss_and_head_bias_gradient_equal_a_numpy_computation(loss_type, label_smoothing):
    policy, reference = two_policies()
    beta = 0.7
    trainer = DPOTrainer(policy, P, R, beta=beta, loss_type=loss_type, reference_policy=reference,
                         label_smoothing=label_smoothing)
    with tf.GradientTape() as tape:
        loss, logs = trainer.compute_losses(tf.constant(BATCH))
    bias = policy.head.bias
    gradient = tape.gradient(loss, bias).numpy()

    pi, ref = numpy_sequence_logps(policy, BATCH), numpy_sequence_logps(reference, BATCH)
    (pc, nc, gc), (pr, nr, gr) = pi["chosen"], pi["rejected"]
    rc, rr = ref["chosen"][0], ref["rejected"][0]
    if loss_type == "ipo":  # TRL's IPO: log-probs averaged over each reply's tokens
        pc, pr, rc, rr = pc / nc, pr / nr, rc / nc, rr / nr
        gc, gr = gc / nc[:, None], gr / nr[:, None]
    h = (pc - rc) - (pr - rr)
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    if loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
        dloss_dh = 2.0 * (h - 1.0 / (2.0 * beta))
    else:
        eps = label_smoothing
        losses = -(1 - eps) * np.log(sigmoid(beta * h)) - eps * np.log(sigmoid(-beta * h))
        # d/dh: -beta * sigmoid(-beta h) for eps = 0 (the DPO paper's gradient weight).
        dloss_dh = -(1 - eps) * beta * sigmoid(-beta * h) + eps * beta * sigmoid(beta * h)
    expected_gradient = (dloss_dh[:, None] * (gc - gr)).mean(0)  # h = logpi_c - logpi_r - ...

    np.testing.assert_allclose(float(loss), losses.mean(), rtol=1e-5)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-6)
    values = logs["values"]
    np.testing.assert_allclose(values["rewards/chosen"], beta * (pc - rc), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(values["rewards/rejected"], beta * (pr - rr), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(values["rewards/margins"], beta * h, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(values["rewards/accuracies"], (h > 0).astype("float32"))
    assert 0 < (h > 0).sum() < len(h)  # both outcomes occur in the batch


def test_gradient_wrt_the_chosen_log_prob_is_minus_beta_sigmoid_of_minus_beta_h():
    # d L / d logpi_c = -beta * sigmoid(-beta * h) and d L / d logpi_r its opposite.
    beta, pc, pr, rc, rr = 0.5, tf.Variable(-1.0), tf.Variable(-3.0), -2.5, -2.0
    with tf.GradientTape() as tape:
        loss = dpo_loss(pc[None], pr[None], [rc], [rr], beta=beta)[0][0]
    d_chosen, d_rejected = tape.gradient(loss, [pc, pr])
    h = (-1.0 + 2.5) - (-3.0 + 2.0)  # 2.5
    expected = -beta / (1.0 + np.exp(beta * h))
    np.testing.assert_allclose([float(d_chosen), float(d_rejected)], [expected, -expected], rtol=1e-6)
    np.testing.assert_allclose(float(loss), np.log1p(np.exp(-beta * h)), rtol=1e-6)


@pytest.mark.parametrize(
    "policy_logps,reference_logps,beta,loss_type,smoothing,expected",
    [
        # h = 0: log 2 for DPO whatever beta and smoothing; (1/(2 beta))^2 for IPO.
        ((-2.0, -5.0), (-2.0, -5.0), 0.1, "sigmoid", 0.0, np.log(2.0)),
        ((-2.0, -5.0), (-2.0, -5.0), 0.1, "sigmoid", 0.3, np.log(2.0)),
        ((-2.0, -5.0), (-2.0, -5.0), 0.25, "ipo", 0.0, 4.0),
        # h = 2, beta = 1: -log sigmoid(2); smoothed 0.1: 0.9 * that + 0.1 * -log sigmoid(-2).
        ((0.0, -2.0), (0.0, 0.0), 1.0, "sigmoid", 0.0, np.log1p(np.exp(-2.0))),
        ((0.0, -2.0), (0.0, 0.0), 1.0, "sigmoid", 0.1, 0.9 * np.log1p(np.exp(-2.0)) + 0.1 * np.log1p(np.exp(2.0))),
        # IPO: h = 2, 1 / (2 * 0.5) = 1: (2 - 1)^2.
        ((0.0, -2.0), (0.0, 0.0), 0.5, "ipo", 0.0, 1.0),
    ],
)
def test_dpo_loss_table(policy_logps, reference_logps, beta, loss_type, smoothing, expected):
    losses, _, _ = dpo_loss([policy_logps[0]], [policy_logps[1]], [reference_logps[0]], [reference_logps[1]],
                            beta=beta, loss_type=loss_type, label_smoothing=smoothing)
    np.testing.assert_allclose(float(losses[0]), expected, rtol=1e-6)


def test_step_zero_with_the_policy_as_reference_is_log_2_and_margin_0():
    policy = PolicyNetwork(VOCAB, 6, 6)
    tokenizer = CharTokenizer.train(["abcdefg"])  # 12 ids: 5 reserved + 7 letters
    trainer = DPOTrainer(ResponseGenerator(policy, tokenizer, P, R))  # default: a frozen copy
    assert trainer.reference_policy is not policy and not trainer.reference_policy.trainable
    trainer.compile(optimizer=keras.optimizers.Adam(0.01))
    loss, logs = trainer.compute_losses(tf.constant(BATCH))
    np.testing.assert_allclose(float(loss), np.log(2.0), rtol=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        np.testing.assert_array_equal(logs["values"][key], np.zeros(len(BATCH)), err_msg=key)
    before = [w.numpy() for w in trainer.reference_policy.weights]
    history = trainer.fit(np.concatenate([BATCH] * 3), batch_size=4, epochs=1, verbose=0, shuffle=False).history
    np.testing.assert_allclose(history["loss"][0], np.log(2.0), atol=0.05)  # 3 steps from log 2
    for a, b in zip(before, trainer.reference_policy.weights):  # the reference stays frozen
        np.testing.assert_array_equal(a, b.numpy())
    _, logs = trainer.compute_losses(tf.constant(BATCH))
    assert float(np.mean(logs["values"]["rewards/margins"])) > 0


def test_lora_policy_uses_the_lora_off_model_as_reference():
    policy = causal_lm_policy("gpt2", VOCAB, num_layers=1, hidden_dim=8, num_heads=2, max_sequence_length=16, seed=0)
    policy.enable_lora(2)
    trainer = DPOTrainer(policy, P, R)
    assert isinstance(trainer.reference_policy, LoRAReference)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5))
    base = [w.numpy() for w in policy.non_trainable_weights]
    history = trainer.fit(BATCH, batch_size=4, epochs=2, verbose=0, shuffle=False).history
    np.testing.assert_allclose(history["loss"][0], np.log(2.0), rtol=1e-5)  # LoRA starts at zero
    assert history["rewards/margins"][1] > 0
    for a, b in zip(base, policy.non_trainable_weights):  # only LoRA trained
        np.testing.assert_array_equal(a, b.numpy())


def test_bad_arguments():
    policy = PolicyNetwork(VOCAB, 6, 6)
    for kwargs, match in [
        ({"beta": 0.0}, "beta must be a number > 0"),
        ({"loss_type": "hinge"}, "Unknown DPO loss_type 'hinge'"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"loss_type": "ipo", "label_smoothing": 0.1}, "the IPO loss has none"),
        ({"reference_policy": policy}, "is the policy itself"),
    ]:
        with pytest.raises(ValueError, match=match):
            DPOTrainer(policy, P, R, **kwargs)
    with pytest.raises(TypeError, match="max_new_tokens"):
        DPOTrainer(policy, P)
    trainer = DPOTrainer(policy, P, R - 1)
    with pytest.raises(ValueError, match=r"\[B, 10\] \(prompt \| chosen \| rejected"):
        trainer.compute_losses(tf.constant(BATCH))


# -- learning ------------------------------------------------------------

TOY_TOKENIZER = CharTokenizer.train(["abcdefgh"])
OTHERS = "bcdefgh"


def toy_triples(prompts, seed):
    """Chosen replies hold an "a" (2 letters in random order), rejected ones never."""
    rng = np.random.default_rng(seed)
    triples = []
    for prompt in prompts:
        chosen = "".join(rng.permutation(["a", rng.choice(list(OTHERS))]))
        triples.append((prompt, chosen, "".join(rng.choice(list(OTHERS), 2))))
    return triples


@pytest.mark.slow
def test_dpo_raises_the_margin_and_a_held_out_reward():
    keras.utils.set_random_seed(0)
    train = toy_triples(OTHERS * 2, seed=0)
    held_out = toy_triples([a + b for a, b in zip(OTHERS[::-1], OTHERS)], seed=1)  # unseen prompts
    generator = ResponseGenerator(PolicyNetwork(TOY_TOKENIZER.vocabulary_size, 8, 16), TOY_TOKENIZER, P, R)

    def share_of_a():
        replies = generator([prompt for prompt, _, _ in held_out])  # greedy
        return np.mean([reply.count("a") / max(len(reply), 1) for reply in replies])

    trainer = DPOTrainer(generator, beta=0.1)
    trainer.compile(optimizer=keras.optimizers.Adam(0.02))
    train_rows = pack_preferences(TOY_TOKENIZER, train, P, R)
    held_rows = pack_preferences(TOY_TOKENIZER, held_out, P, R)
    rows = np.concatenate([train_rows, held_rows])  # one evaluation call: train rows, then held-out

    def margins():
        _, logs = trainer.compute_losses(tf.constant(rows))
        values = logs["values"]
        split = len(train_rows)
        return [(float(np.mean(values["rewards/margins"][s])), float(np.mean(values["rewards/accuracies"][s])))
                for s in (slice(None, split), slice(split, None))]

    (train_before, _), (held_before, _) = margins()
    share_before = share_of_a()
    steps = tf.data.Dataset.from_tensor_slices(train_rows).batch(14).repeat(30)  # 30 steps, one epoch
    trainer.fit(steps, epochs=1, verbose=0, shuffle=False)
    (train_after, train_accuracy), (held_after, held_accuracy) = margins()
    share_after = share_of_a()
    # Measured: train margin 0 -> 4.45 (accuracy 1.0); held-out margin
    # 0 -> 3.97 (accuracy 1.0); greedy share of "a" on held-out prompts 0.07 -> 1.0.
    assert train_before == pytest.approx(0.0, abs=1e-6) and held_before == pytest.approx(0.0, abs=1e-6)
    assert train_after > 2.0 and train_accuracy == 1.0
    assert held_after > 2.0 and held_accuracy == 1.0
    assert share_after > share_before + 0.5, (share_before, share_after)


# -- packing and loading -----------------------------------------------------


def test_pack_preferences_layout():
    tokenizer = CharTokenizer.train(["abc"])
    a, b, c = (int(tokenizer.tokenize([ch])[0][0]) for ch in "abc")
    with pytest.warns(UserWarning, match="1 chosen and 0 rejected replies were longer than 2 tokens"):
        rows = pack_preferences(tokenizer, [("ab", "c", ""), ("c", "abc", "ba")], prompt_length=4, response_length=3)
    assert rows.dtype == np.int32 and rows.shape == (2, 4 + 2 * 3)
    bos, sep = 1, 4
    assert rows.tolist() == [
        [bos, a, b, sep, c, EOS_ID, PAD_ID, EOS_ID, PAD_ID, PAD_ID],
        [PAD_ID, bos, c, sep, a, b, c, b, a, EOS_ID],  # "abc" is cut: no EOS
    ]
    with pytest.raises(ValueError, match="empty"):
        pack_preferences(tokenizer, [], 4, 3)
    with pytest.raises(ValueError, match=r"\(prompt, chosen, rejected\) tuples of str"):
        pack_preferences(tokenizer, [("a", "b")], 4, 3)


def test_load_preferences_jsonl_and_tsv(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go", "score": 3}) + "\n\n"
        + json.dumps({"prompt": "", "chosen": "é\u2028x", "rejected": ""}) + "\n",
        encoding="utf-8",
    )
    assert load_preferences(str(jsonl)) == [("hi", "hello", "go"), ("", "é\u2028x", "")]
    tsv = tmp_path / "p.tsv"
    tsv.write_text("prompt\tchosen\trejected\nhi\thello \tgo\n\n2+2\t4\t5\n", encoding="utf-8")
    assert load_preferences(str(tsv)) == [("hi", "hello", "go"), ("2+2", "4", "5")]


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("empty.jsonl", "\n  \n", "holds no examples"),
        ("empty.tsv", "prompt\tchosen\trejected\n", "holds no examples"),
        ("key.jsonl", '{"prompt": "a", "chosen": "b"}\n', "line 1: missing field(s) ['rejected']"),
        ("type.jsonl", '{"prompt": "a", "chosen": "b", "rejected": 3}\n', "line 1: 'rejected' must be a string, got int"),
        ("list.jsonl", '["a", "b", "c"]\n', "line 1: expected a JSON object, got list"),
        ("bad.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{oops\n', "line 2: not valid JSON"),
        ("columns.tsv", "a\tb\tc\na\tb\n", "line 2: expected 3 tab-separated fields (prompt, chosen, rejected), found 2"),
        ("pairs.json", "[]", "preference files end in one of ['.jsonl', '.tsv']"),
    ],
)
def test_load_preferences_errors_are_one_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as info:
        load_preferences(str(path))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(FileNotFoundError):
        load_preferences(str(tmp_path / "missing.tsv"))


# -- replicas ----------------------------------------------------------------


@pytest.mark.skipif(len(cpu_devices()) < 2, reason="needs 2 logical CPU devices")
def test_one_step_on_two_replicas_equals_one_device():
    # SGD, not Adam: Adam's first step is about lr * sign(gradient), which
    # would hide a loss scaled wrongly by the number of replicas.
    policy, reference = two_policies()
    weights, reference_weights = policy.get_weights(), reference.get_weights()

    def one_step(strategy):
        with strategy.scope():
            policy, reference = PolicyNetwork(VOCAB, 6, 6), PolicyNetwork(VOCAB, 6, 6)
            policy.set_weights(weights)
            reference.set_weights(reference_weights)
            # Label smoothing: both log-sigmoid terms; IPO's averages are per row.
            trainer = DPOTrainer(policy, P, R, beta=0.5, reference_policy=reference, label_smoothing=0.1)
            trainer.compile(optimizer=keras.optimizers.SGD(0.5))
        history = trainer.fit(BATCH, batch_size=4, epochs=1, verbose=0, shuffle=False).history
        return [w.numpy() for w in policy.weights], history

    single, logs1 = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored, logs2 = one_step(mirrored_strategy())
    assert max(np.abs(a - b).max() for a, b in zip(single, weights)) > 1e-3  # the step moved the weights
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert set(logs1) == {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                          "logps/chosen", "logps/rejected"}
    for key in logs1:
        np.testing.assert_allclose(logs1[key], logs2[key], rtol=1e-4, atol=1e-6, err_msg=key)


# -- the loop's "dpo" method ---------------------------------------------------


def test_preference_pairs_table():
    # Per prompt (K = 3): the first best and the first worst; ties give no pair.
    chosen, rejected = preference_pairs(np.array([0.5, 1.0, 1.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.1]), 3)
    assert chosen.tolist() == [1, 8] and rejected.tolist() == [0, 6]
    with pytest.raises(ValueError, match="num_samples >= 2"):
        preference_pairs(np.zeros(4), 1)


class _StopAt(keras.callbacks.Callback):
    """Crashes the process stand-in at the start of a given (global) epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("killed")


def dpo_loop(directory, rounds=2, callbacks=()):
    keras.utils.set_random_seed(7)
    policy = PolicyNetwork(LOOP_TOKENIZER.vocabulary_size, 8, 16)
    return SelfFeedbackLoop(
        policy, LOOP_TOKENIZER, ShareOfA(), LOOP_TRAIN, LOOP_VALIDATION, P, 6, methods="dpo", rounds=rounds,
        num_samples=4, dpo_steps=16, rl_batch_size=4, rl_learning_rate=0.05, dpo_options={"beta": 0.5},
        text_metrics=False, directory=directory, seed=3, verbose=0, score_batch_size=16, callbacks=list(callbacks),
    )


@pytest.mark.slow
def test_loop_dpo_rounds_train_the_policy_and_resume(tmp_path):
    reference_run = dpo_loop(str(tmp_path / "ref"))
    start = [w.numpy() for w in reference_run.policy.weights]
    history = reference_run.run()
    record = history[1]["dpo"]
    with np.load(tmp_path / "ref" / "round_1" / "candidates.npz") as data:
        rewards = data["rewards"]
        np.testing.assert_allclose(rewards, share_of_a_numpy(data["candidates"]), atol=1e-6)
    assert record["pairs"] == len(preference_pairs(rewards, 4)[0]) > 0
    assert record["steps"] == 16 and record["margin"] > 0 and 0.0 <= record["accuracy"] <= 1.0
    assert max(np.abs(a - b.numpy()).max() for a, b in zip(start, reference_run.policy.weights)) > 1e-3
    assert os.path.exists(tmp_path / "ref" / "round_2" / "dpo" / "state.json")
    assert history[-1]["metrics"]["val_reward"] > history[0]["metrics"]["val_reward"]

    # Killed in round 2 after its first checkpointed chunk (epoch 2 of 0..3),
    # then run again: the same numbers and weights as the uninterrupted run.
    with pytest.raises(KeyboardInterrupt):
        dpo_loop(str(tmp_path / "run"), callbacks=[_StopAt(3)]).run()
    state = json.loads((tmp_path / "run" / "round_2" / "dpo" / "state.json").read_text())
    assert state["epochs_done"] == 1
    resumed = dpo_loop(str(tmp_path / "run"))
    assert [h["metrics"] for h in resumed.run()] == [h["metrics"] for h in history]
    for a, b in zip(resumed.policy.weights, reference_run.policy.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_loop_refuses_bad_dpo_settings():
    for kwargs, match in [
        ({"dpo_options": {"beta": -1.0}}, "beta must be a number > 0"),
        ({"dpo_options": {"gamma": 1.0}}, r"Unknown dpo_options \['gamma'\]"),
        ({"num_samples": 1}, "needs num_samples >= 2"),
    ]:
        options = {"num_samples": 4, **kwargs}
        with pytest.raises(ValueError, match=match):
            SelfFeedbackLoop(PolicyNetwork(LOOP_TOKENIZER.vocabulary_size, 8, 8), LOOP_TOKENIZER, ShareOfA(),
                             LOOP_TRAIN, LOOP_VALIDATION, P, 6, methods="dpo", **options)
