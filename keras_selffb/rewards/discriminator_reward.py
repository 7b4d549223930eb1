"""`DiscriminatorReward`: a learned evaluator's P(real) as the reward.

The reward of SeqGAN (Yu et al. 2017) and of GAN-style self-feedback in
general: a classifier is trained to tell real sequences from the policy's
own samples, and the policy is rewarded by how real its samples look,

    reward_i = D(candidate_i) = P(real | candidate_i)  in [0, 1].

The classifier is any Keras model that maps token ids `[B, T]` to one
probability (or logit, `from_logits=True`) per row, `[B]` or `[B, 1]`: an
`LLMEncoder` followed by `Dense(1, activation="sigmoid")`, or a small CNN
over token embeddings as SeqGAN used. It reads the candidate ids exactly as
the trainer passes them (EOS and PAD included), so train it on ids of the
same layout. `fit_discriminator(real_ids, fake_ids, ...)` (re)trains it by
binary cross-entropy with Adam; a self-feedback round calls it on real data
and the policy's current samples before the policy's updates, so the
evaluator keeps up with the policy.

A discriminator retrained every round on one fixed real set memorises it
(SeqGAN's oracle benchmark: 0.98 training accuracy, 0.56-0.62 on held-out
real sequences). Two regularisers are built in: the classifier's own
regularisation losses (`kernel_regularizer=...`, `model.losses`) are added
to the training loss, and `label_smoothing` gives real rows the target
`1 - label_smoothing` (one-sided smoothing, Salimans et al. 2016: fakes
stay at 0, so the reward is never pushed up for fake-looking rows).
"""

import keras
import numpy as np
import tensorflow as tf

from keras_selffb.rewards.base import Reward


def _check_ids(ids, what):
    """`ids` as an int32 array `[N, T]`, N, T >= 1, or a one-line error."""
    array = np.asarray(ids)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{what} must be integer token ids; got dtype {array.dtype}.")
    if array.ndim != 2:
        raise ValueError(f"{what} must be token ids [N, T] (2-D); got shape {array.shape}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {array.shape}).")
    if array.min() < 0:
        raise ValueError(f"{what} holds negative ids (min {array.min()}).")
    return array.astype(np.int32)


class DiscriminatorReward(Reward):
    """P(real) of each candidate under a learned classifier, in [0, 1].

    The classifier runs with `training=False` (no dropout) and the result is
    wrapped in `tf.stop_gradient`: the policy is trained by the trainer's
    estimator (REINFORCE, ranking), never through the classifier. Prompts
    and references are not read.

    Args:
        classifier: a Keras model mapping int ids `[B, T]` to `[B]` or
            `[B, 1]`: probabilities that the row is real (a sigmoid output),
            or logits with `from_logits=True`.
        from_logits: bool. The classifier returns logits; the reward applies
            a sigmoid and the training loss takes logits. Defaults to `False`.
        learning_rate: float. Adam's learning rate in `fit_discriminator`.
            Defaults to `1e-3`.
        label_smoothing: float in [0, 0.5). Real rows are trained toward
            `1 - label_smoothing`, fake rows toward 0. Defaults to `0.0`.
        name: str. The logged name. Defaults to `"discriminator"`.

    Example:

    >>> import numpy as np
    >>> from keras_selffb.models import LLMEncoder
    >>> classifier = keras.Sequential([
    ...     LLMEncoder(vocab_size=20, embedding_dim=8, hidden_dim=8),
    ...     keras.layers.Dense(1, activation="sigmoid")])
    >>> reward = DiscriminatorReward(classifier, learning_rate=0.02)
    >>> rng = np.random.default_rng(0)
    >>> real = rng.integers(5, 10, size=(64, 6))  # "real" rows use ids 5..9
    >>> fake = rng.integers(15, 20, size=(64, 6))  # the generator's, 15..19
    >>> history = reward.fit_discriminator(real, fake, epochs=8, batch_size=16, seed=0)
    >>> bool(history["loss"][-1] < history["loss"][0]), history["accuracy"][-1]
    (True, 1.0)
    >>> values = reward(None, np.concatenate([real[:2], fake[:2]]), None).numpy()
    >>> bool(values.min() >= 0.0 and values.max() <= 1.0)
    True
    >>> bool(values[:2].min() > 0.5 > values[2:].max())
    True
    >>> reward(None, np.zeros((2, 3, 4), "int32"), None)
    Traceback (most recent call last):
    ...
    ValueError: DiscriminatorReward needs candidates [B, N] (2-D token ids); got shape (2, 3, 4).

    References:
        Yu, Zhang, Wang and Yu (2017), "SeqGAN: Sequence Generative
        Adversarial Nets with Policy Gradient", AAAI.
    """

    default_name = "discriminator"

    def __init__(self, classifier, from_logits=False, learning_rate=1e-3, label_smoothing=0.0, name=None):
        super().__init__(name=name)
        if not callable(classifier) or not hasattr(classifier, "trainable_variables"):
            raise TypeError(
                "DiscriminatorReward needs a Keras classifier (a model mapping ids [B, T] "
                f"to P(real) [B] or [B, 1]); got {type(classifier).__name__}."
            )
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0; got {learning_rate}.")
        if isinstance(label_smoothing, bool) or not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5); got {label_smoothing!r}.")
        self.classifier = classifier
        self.from_logits = bool(from_logits)
        self.learning_rate = float(learning_rate)
        self.label_smoothing = float(label_smoothing)
        self.optimizer = None
        self._train_step = None

    # -- the reward -----------------------------------------------------------

    def _outputs(self, ids, training):
        """The classifier's raw output for `ids` as float32 `[B]`."""
        out = tf.cast(self.classifier(ids, training=training), tf.float32)
        rank = out.shape.rank
        if rank == 2 and out.shape[1] == 1:
            out = out[:, 0]
        elif rank != 1:
            raise ValueError(
                f"The classifier must return one value per row, [B] or [B, 1]; got shape {out.shape}."
            )
        return out

    def probabilities(self, ids, training=False):
        """P(real) `[B]` of token ids `[B, T]` (with gradient; the reward stops it)."""
        out = self._outputs(ids, training)
        if self.from_logits:
            return tf.sigmoid(out)
        # A sigmoid head already lies in [0, 1]; the clip guards other heads.
        return tf.clip_by_value(out, 0.0, 1.0)

    def call(self, prompts, candidates, references):
        candidates = tf.convert_to_tensor(candidates)
        if not candidates.dtype.is_integer:
            raise TypeError(
                f"DiscriminatorReward needs integer candidate ids; got dtype {candidates.dtype.name}."
            )
        if candidates.shape.rank != 2:
            raise ValueError(
                "DiscriminatorReward needs candidates [B, N] (2-D token ids); got shape "
                f"{tuple(candidates.shape)}."
            )
        return tf.stop_gradient(self.probabilities(tf.cast(candidates, tf.int32)))

    # -- training the evaluator ------------------------------------------------

    def _build_training(self, sample_ids):
        self.classifier(sample_ids, training=False)  # builds the weights
        self.optimizer = keras.optimizers.Adam(self.learning_rate)
        variables = self.classifier.trainable_variables
        self.optimizer.build(variables)

        smoothing = self.label_smoothing

        @tf.function(reduce_retracing=True)
        def train_step(ids, labels):
            targets = labels * (1.0 - smoothing)  # one-sided: real 1 - s, fake 0
            with tf.GradientTape() as tape:
                out = self._outputs(ids, training=True)
                losses = keras.losses.binary_crossentropy(
                    targets[:, None], out[:, None], from_logits=self.from_logits
                )
                loss = tf.reduce_mean(losses)
                if self.classifier.losses:  # kernel_regularizer etc. of the classifier
                    loss += tf.add_n([tf.cast(x, tf.float32) for x in self.classifier.losses])
            self.optimizer.apply(tape.gradient(loss, variables), variables)
            threshold = 0.0 if self.from_logits else 0.5
            correct = tf.cast(tf.equal(tf.cast(out > threshold, tf.float32), labels), tf.float32)
            return tf.reduce_sum(losses), tf.reduce_sum(correct)

        self._train_step = train_step

    def fit_discriminator(self, real_ids, fake_ids, epochs=1, batch_size=64, seed=0, verbose=0):
        """(Re)trains the classifier: real rows labelled 1, fake rows 0.

        Binary cross-entropy (real targets `1 - label_smoothing`) plus the
        classifier's regularisation losses, Adam (`learning_rate`, one
        optimizer kept across calls), mini-batches of the shuffled union. The seed fixes
        the shuffling; a classifier with dropout also draws from Keras's
        global seed (`keras.utils.set_random_seed`).

        Args:
            real_ids: int array `[N_real, T]`: real sequences.
            fake_ids: int array `[N_fake, T]`: generated sequences, same `T`.
            epochs: int >= 1. Passes over the union. Defaults to `1`.
            batch_size: int >= 1. Defaults to `64`.
            seed: int. Seeds the shuffling. Defaults to `0`.
            verbose: int. `1` shows a Keras progress bar per epoch.
                Defaults to `0`.

        Returns:
            dict: `"loss"` (mean binary cross-entropy, without the
            regularisation losses) and `"accuracy"` (threshold 0.5 against
            the hard labels), one float per epoch, measured during training.
        """
        real = _check_ids(real_ids, "real_ids")
        fake = _check_ids(fake_ids, "fake_ids")
        if real.shape[1] != fake.shape[1]:
            raise ValueError(
                f"real_ids and fake_ids must have the same length T; got {real.shape[1]} and "
                f"{fake.shape[1]} (pad them to one width)."
            )
        for label, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{label} must be an integer >= 1; got {value!r}.")
        ids = np.concatenate([real, fake])
        labels = np.concatenate([np.ones(len(real), np.float32), np.zeros(len(fake), np.float32)])
        if self._train_step is None:
            self._build_training(tf.constant(ids[:1]))
        rng = np.random.default_rng(seed)
        history = {"loss": [], "accuracy": []}
        steps = -(-len(ids) // batch_size)
        for epoch in range(epochs):
            order = rng.permutation(len(ids))
            bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy"]) if verbose else None
            loss_sum = correct_sum = 0.0
            for step in range(steps):
                rows = order[step * batch_size : (step + 1) * batch_size]
                loss, correct = self._train_step(tf.constant(ids[rows]), tf.constant(labels[rows]))
                loss_sum += float(loss)
                correct_sum += float(correct)
                if bar is not None:
                    seen = min((step + 1) * batch_size, len(ids))
                    bar.update(step + 1, [("loss", loss_sum / seen), ("accuracy", correct_sum / seen)])
            history["loss"].append(loss_sum / len(ids))
            history["accuracy"].append(correct_sum / len(ids))
        return history

    def __repr__(self):
        return f"{type(self).__name__}(classifier={self.classifier.name!r}, name={self.name!r})"
