"""Training and evaluating the `RelevanceJudge`: contrastive prompt-reply matching.

`JudgeTrainer` trains the dual encoder with the symmetric InfoNCE loss over
in-batch negatives (CLIP; van den Oord et al. 2018): each row's prompt must
pick out its own reply among the batch's replies, and each reply its own
prompt among the batch's prompts. Rows whose prompts (or replies) are the
same text are not negatives of each other: their off-diagonal logits are
masked out, so a dataset with several replies per prompt teaches nothing
contradictory. `train_judge` runs it on packed `[prompt | reply]` rows of
the training split, and `retrieval_accuracy` evaluates a frozen judge: for
each reply, is its own prompt ranked first among `num_candidates` prompts?
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_selffb.models.judge import check_judge, content_ids
from keras_selffb.text.packing import make_dataset
from keras_selffb.text.tokenizer import NUM_RESERVED, PAD_ID
from keras_selffb.training.losses import global_sum, split_packed
from keras_selffb.training.trackers import RatioTracker, step_logs

# Masked logits: far below any real one (|cos / t| <= 100), finite so that
# log-softmax and its gradient stay NaN-free.
_MASKED_LOGIT = -1e9


def same_rows(ids):
    """`[B, B]` bool: rows `i` and `j` hold the same content tokens.

    Reserved ids are ignored (turned into PAD first), as the judge ignores
    them, so rows it cannot tell apart count as the same.

    Args:
        ids: int tensor `[B, T]`.
    """
    ids = content_ids(ids)
    return ops.all(ops.equal(ids[:, None, :], ids[None, :, :]), axis=-1)


def info_nce_terms(logits, same_prompt, same_reply):
    """Per-row symmetric InfoNCE loss and reply->prompt top-1 hits.

    Args:
        logits: float `[B, B]`, `logits[i, j]` = similarity of prompt `i`
            and reply `j` (the diagonal holds the true pairs).
        same_prompt: bool `[B, B]`, rows with identical prompts.
        same_reply: bool `[B, B]`, rows with identical replies.

    Returns:
        `(loss [B], correct [B])`: `loss_i` is the mean of the
        cross-entropies prompt `i` -> its reply (over row `i`) and reply
        `i` -> its prompt (over column `i`), duplicates of row `i` masked
        out; `correct_i` is 1.0 when prompt `i` scores strictly above every
        other (unmasked) prompt for reply `i`.
    """
    logits = ops.cast(logits, "float32")
    eye = ops.eye(ops.shape(logits)[0], dtype="bool")
    masked = ops.where(
        ops.logical_and(ops.logical_or(same_prompt, same_reply), ops.logical_not(eye)),
        _MASKED_LOGIT,
        logits,
    )
    diagonal = ops.diagonal(masked)
    prompt_to_reply = ops.logsumexp(masked, axis=1) - diagonal
    reply_to_prompt = ops.logsumexp(masked, axis=0) - diagonal
    loss = 0.5 * (prompt_to_reply + reply_to_prompt)
    best_other = ops.max(ops.where(eye, _MASKED_LOGIT, masked), axis=0)
    correct = ops.cast(diagonal > best_other, "float32")
    return loss, correct


@keras.saving.register_keras_serializable(package="keras_selffb")
class JudgeTrainer(keras.Model):
    """Trains a `RelevanceJudge` with symmetric InfoNCE over in-batch negatives.

    A batch is one int32 tensor of packed rows `[prompt | reply]`, the
    first `prompt_length` columns the prompt (the layout of
    `keras_selffb.text.pack_pairs`). The logits are
    `judge.similarity(prompts, replies)`, `[B, B]`; the loss of a row is the
    mean of the cross-entropy of its prompt over the batch's replies and of
    its reply over the batch's prompts. Rows with identical prompts or
    identical replies are not each other's negatives (their logits are
    masked). Under a distribution strategy each replica's negatives are its
    own rows, and the loss is the replica's summed row losses over the
    GLOBAL row count (all-reduced, as `MLETrainer` does), i.e. the local
    mean divided by `num_replicas_in_sync` for equal local batches, because
    the optimizer sums the replicas' gradients.

    Reported: `loss` (the mean row loss, nats) and `accuracy` (in-batch
    top-1 retrieval reply -> prompt, duplicates not counted as rivals).

    Args:
        judge: a `keras_selffb.models.RelevanceJudge`.
        prompt_length: int. Prompt columns `P` of each packed row.

    Example:

    >>> from keras_selffb.models import RelevanceJudge
    >>> judge = RelevanceJudge(vocab_size=12, embedding_dim=8, hidden_dim=8, projection_dim=8)
    >>> trainer = JudgeTrainer(judge, prompt_length=3)
    >>> trainer.compile(optimizer=keras.optimizers.Adam(0.05))
    >>> packed = np.array([[1, 5, 4, 5, 2], [1, 6, 4, 6, 2],
    ...                    [1, 7, 4, 7, 2], [1, 8, 4, 8, 2]], "int32")
    >>> history = trainer.fit(packed, batch_size=4, epochs=20, shuffle=False, verbose=0).history
    >>> bool(history["loss"][-1] < history["loss"][0]), history["accuracy"][-1]
    (True, 1.0)
    """

    def __init__(self, judge, prompt_length, **kwargs):
        super().__init__(**kwargs)
        self.judge = check_judge(judge, "JudgeTrainer")
        if not isinstance(prompt_length, (int, np.integer)) or prompt_length < 1:
            raise ValueError(f"JudgeTrainer needs a positive int prompt_length; got {prompt_length!r}.")
        self.prompt_length = int(prompt_length)
        self.loss_tracker = RatioTracker(name="loss")
        self.accuracy_tracker = RatioTracker(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=None):
        """Packed rows `[B, P + R]` -> the judge's logits `[B, B]`."""
        prompt_ids, reply_ids = split_packed(inputs, self.prompt_length)
        return self.judge.similarity(prompt_ids, reply_ids, training=training)

    def _terms(self, data, training):
        if isinstance(data, tuple):
            data = data[0]
        prompt_ids, reply_ids = split_packed(data, self.prompt_length)
        logits = self.judge.similarity(prompt_ids, reply_ids, training=training)
        return info_nce_terms(logits, same_rows(prompt_ids), same_rows(reply_ids))

    def _update(self, loss, correct):
        count = ops.cast(ops.shape(loss)[0], "float32")
        self.loss_tracker.update_state(ops.sum(loss), count)
        self.accuracy_tracker.update_state(ops.sum(correct), count)
        return step_logs(self.metrics, self.distribute_strategy)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            row_loss, correct = self._terms(data, training=True)
            rows = ops.cast(ops.shape(row_loss)[0], "float32")
            loss = ops.sum(row_loss) / ops.maximum(global_sum(rows), 1.0)
        variables = self.judge.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        return self._update(row_loss, correct)

    def test_step(self, data):
        row_loss, correct = self._terms(data, training=False)
        return self._update(row_loss, correct)

    def get_config(self):
        return {
            **super().get_config(),
            "judge": keras.saving.serialize_keras_object(self.judge),
            "prompt_length": self.prompt_length,
        }

    @classmethod
    def from_config(cls, config):
        config["judge"] = keras.saving.deserialize_keras_object(config["judge"])
        return cls(**config)


def _check_packed(packed, prompt_length, what):
    packed = np.asarray(packed)
    if packed.ndim != 2 or len(packed) == 0 or not np.issubdtype(packed.dtype, np.integer):
        raise ValueError(
            f"{what} must be a non-empty int array (N, prompt_length + reply_length) "
            f"of packed rows; got shape {packed.shape} and dtype {packed.dtype}."
        )
    if not 1 <= prompt_length < packed.shape[1]:
        raise ValueError(
            f"prompt_length={prompt_length} leaves no reply columns in {what} of "
            f"{packed.shape[1]} columns."
        )
    return packed.astype(np.int32)


def train_judge(
    judge,
    train_packed,
    prompt_length,
    epochs=5,
    batch_size=64,
    learning_rate=1e-3,
    seed=0,
    validation_packed=None,
    verbose=0,
):
    """Trains `judge` contrastively on packed `[prompt | reply]` rows; returns the history.

    Adam at `learning_rate`, the training rows reshuffled every epoch
    (seeded) and cut into full batches of `batch_size` (the remainder is
    dropped: a batch's size is its number of negatives). Use the TRAINING
    split only; evaluate on held-out rows (`validation_packed`,
    `retrieval_accuracy`).

    Args:
        judge: a `keras_selffb.models.RelevanceJudge`, trained in place.
        train_packed: int array `(N, P + R)`, e.g. `pack_pairs(...)`.
        prompt_length: int. Prompt columns `P`.
        epochs: int. Defaults to `5`.
        batch_size: int >= 2, at most N. Defaults to `64`.
        learning_rate: float. Defaults to `1e-3`.
        seed: int. Seeds the shuffling. Defaults to `0`.
        validation_packed: int array `(M, P + R)` or None. Evaluated after
            every epoch (`val_loss`, `val_accuracy`), in batches of
            `batch_size` (one batch of all rows if `M < batch_size`).
        verbose: int. Keras `fit` verbosity. Defaults to `0`.

    Returns:
        dict. The Keras history: `loss`, `accuracy` (and `val_...`) per epoch.

    Example:

    >>> from keras_selffb.models import RelevanceJudge
    >>> judge = RelevanceJudge(vocab_size=12, embedding_dim=8, hidden_dim=8, projection_dim=8)
    >>> packed = np.array([[1, k, 4, k, 2] for k in range(5, 12)] * 2, "int32")
    >>> history = train_judge(judge, packed, prompt_length=3, epochs=2, batch_size=4)
    >>> sorted(history), len(history["loss"])
    (['accuracy', 'loss'], 2)
    """
    check_judge(judge, "train_judge")
    train_packed = _check_packed(train_packed, prompt_length, "train_packed")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (in-batch negatives); got {batch_size!r}.")
    if len(train_packed) < batch_size:
        raise ValueError(
            f"train_packed has {len(train_packed)} rows, fewer than batch_size={batch_size}: "
            "no full batch to train on. Lower batch_size."
        )
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}.")
    train = make_dataset(train_packed, batch_size, shuffle=True, seed=seed, drop_remainder=True)
    validation = None
    if validation_packed is not None:
        validation_packed = _check_packed(validation_packed, prompt_length, "validation_packed")
        validation = make_dataset(
            validation_packed,
            min(batch_size, len(validation_packed)),
            drop_remainder=len(validation_packed) >= batch_size,
        )
    trainer = JudgeTrainer(judge, prompt_length)
    trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
    # The dataset is already shuffled (seeded, every epoch).
    history = trainer.fit(train, epochs=epochs, validation_data=validation, shuffle=False, verbose=verbose)
    return history.history


def _content_keys(ids):
    """Group id per row: rows with the same content tokens share one."""
    ids = np.asarray(ids)
    keys = np.where(ids >= NUM_RESERVED, ids, PAD_ID)
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1)


def candidate_prompts(prompt_ids, num_candidates=20):
    """Rival prompt rows for each reply of `retrieval_accuracy`: `[N, C - 1]`, -1 padded.

    For row `i`, walking the rows cyclically from `i + 1`: each row whose
    prompt differs from prompt `i` and from the prompts already taken, until
    `num_candidates - 1` are taken (every other distinct prompt if there are
    fewer).

    Args:
        prompt_ids: int `[N, P]`.
        num_candidates: int >= 2. Own prompt included.
    """
    groups = _content_keys(prompt_ids)
    n, need = len(groups), num_candidates - 1
    rows = np.full((n, need), -1, dtype=np.int64)
    for i in range(n):
        seen, taken = {groups[i]}, 0
        for step in range(1, n):
            k = (i + step) % n
            if groups[k] not in seen:
                seen.add(groups[k])
                rows[i, taken] = k
                taken += 1
                if taken == need:
                    break
    return rows


def _embed(fn, ids, batch_size):
    return np.concatenate(
        [np.asarray(fn(ids[start : start + batch_size], training=False)) for start in range(0, len(ids), batch_size)]
    )


def retrieval_successes(judge, prompt_ids, reply_ids, num_candidates=20, batch_size=256):
    """Per reply: does its own prompt get the strictly highest similarity? bool `[N]`.

    See `retrieval_accuracy`, its mean.
    """
    prompt_ids = np.asarray(prompt_ids)
    reply_ids = np.asarray(reply_ids)
    if prompt_ids.ndim != 2 or reply_ids.ndim != 2 or len(prompt_ids) != len(reply_ids):
        raise ValueError(
            "retrieval_accuracy needs prompt_ids [N, P] and reply_ids [N, R] with the same N; "
            f"got shapes {prompt_ids.shape} and {reply_ids.shape}."
        )
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be >= 2 (the own prompt and a rival); got {num_candidates}.")
    for method in ("embed_prompts", "embed_replies"):
        if not callable(getattr(judge, method, None)):
            raise TypeError(
                f"retrieval_accuracy needs a RelevanceJudge (with `{method}`); got {type(judge).__name__}."
            )
    rivals = candidate_prompts(prompt_ids, num_candidates)
    if len(rivals) == 0 or np.all(rivals[:, 0] < 0):
        raise ValueError("retrieval_accuracy needs at least 2 distinct prompts; all prompts are the same.")
    prompts = _embed(judge.embed_prompts, prompt_ids, batch_size)
    replies = _embed(judge.embed_replies, reply_ids, batch_size)
    own = np.sum(prompts * replies, axis=1)
    # Rival scores in chunks of rows: [chunk, C - 1, D] at most, never [N, N].
    best_rival = np.empty(len(own), dtype=np.float32)
    for start in range(0, len(own), batch_size):
        index = rivals[start : start + batch_size]
        scores = np.einsum("ncd,nd->nc", prompts[np.maximum(index, 0)], replies[start : start + batch_size])
        best_rival[start : start + batch_size] = np.max(np.where(index >= 0, scores, -np.inf), axis=1)
    return own > best_rival


def retrieval_accuracy(judge, prompt_ids, reply_ids, num_candidates=20, batch_size=256):
    """Share of replies whose own prompt the judge ranks first among `num_candidates`.

    Reply `i` is scored against prompt `i` and `num_candidates - 1` rival
    prompts: the next rows in cyclic order (`i + 1`, `i + 2`, ...) whose
    prompt differs from prompt `i`, each distinct prompt taken once (all
    the others if there are fewer distinct prompts). Rows that repeat
    prompt `i` are skipped: their reply is not wrong for it. A success is
    prompt `i` scoring STRICTLY above every rival (so a reply with no
    content, which scores 0 against all, fails). Chance is
    `1 / num_candidates`. Prompts are compared by content tokens (reserved
    ids ignored), as the judge reads them.

    Args:
        judge: a `keras_selffb.models.RelevanceJudge` (frozen: run with
            `training=False`).
        prompt_ids: int `[N, P]`, e.g. the prompt columns of packed rows.
        reply_ids: int `[N, R]`, row `i` the reply to prompt `i`.
        num_candidates: int >= 2. Prompts per reply, its own included.
            Defaults to `20`.
        batch_size: int. Rows embedded per call. Defaults to `256`.

    Returns:
        float. Mean success over the N replies.

    Example:

    >>> from keras_selffb.models import RelevanceJudge
    >>> judge = RelevanceJudge(vocab_size=12, embedding_dim=8, hidden_dim=8, projection_dim=8)
    >>> prompts = np.array([[1, k, 4] for k in range(5, 12)], "int32")
    >>> replies = np.array([[2, 0]] * 7, "int32")  # empty replies: never first
    >>> retrieval_accuracy(judge, prompts, replies, num_candidates=3)
    0.0
    """
    return float(np.mean(retrieval_successes(judge, prompt_ids, reply_ids, num_candidates, batch_size)))
