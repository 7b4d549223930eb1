"""The article's section 5.1 done right: policy-gradient text generation.

The article's sketch multiplies rewards onto a cross-entropy against the
input batch and takes an argmax, so nothing it does can learn. Here:

1. a character-level `PolicyNetwork` learns the embedded English dialogue
   corpus by maximum likelihood;
2. a `ReinforceTrainer` samples K replies per prompt, scores them with the
   article's reward R = fluency + relevance + informativeness (plus, by
   default, ROUGE-L against the reference reply), makes the greedy reply
   one of the K (so the reply greedy decoding returns is trained too),
   baselines them with RLOO and follows the policy gradient, keeping an
   MLE term and a KL penalty to the MLE policy;
3. validation ROUGE-L / BLEU / perplexity are printed before and after, with
   the mean of each reward component.

    python examples/rl_text_generation.py [--mle-epochs 4] [--rl-steps 60] [--language zh]
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_selffb.data import load_chatterbot, split_pairs  # noqa: E402
from keras_selffb.evaluation import evaluate_policy  # noqa: E402
from keras_selffb.models import PolicyNetwork, frozen_copy  # noqa: E402
from keras_selffb.rewards import RougeLReward, WeightedReward, article_reward  # noqa: E402
from keras_selffb.text import CharTokenizer, make_dataset, pack_pairs  # noqa: E402
from keras_selffb.training import MLETrainer, ReinforceTrainer  # noqa: E402

PROMPT_LENGTH, RESPONSE_LENGTH = 48, 80


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--language", default="en", choices=["en", "zh"])
    parser.add_argument("--mle-epochs", type=int, default=4)
    parser.add_argument("--rl-steps", type=int, default=60)
    parser.add_argument("--rouge-weight", type=float, default=1.0,
                        help="weight of ROUGE-L next to the article's three rewards (0: article only)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    pairs = list(dict.fromkeys(load_chatterbot(args.language)))  # the corpus repeats some pairs
    train, validation, _ = split_pairs(pairs, seed=args.seed)
    tokenizer = CharTokenizer.train([t for pair in train for t in pair])
    packed = pack_pairs(tokenizer, train, PROMPT_LENGTH, RESPONSE_LENGTH, warn=False)

    policy = PolicyNetwork(tokenizer.vocabulary_size, embedding_dim=64, hidden_dim=256, dropout=0.1)
    mle = MLETrainer(policy, PROMPT_LENGTH)
    mle.compile(optimizer=keras.optimizers.Adam(3e-3, clipnorm=1.0))
    mle.fit(make_dataset(packed, 32, shuffle=True, seed=args.seed), epochs=args.mle_epochs, verbose=2)
    before = evaluate_policy(policy, tokenizer, validation, PROMPT_LENGTH, RESPONSE_LENGTH)

    reference = frozen_copy(policy)
    reward = article_reward(reference, tokenizer=tokenizer)  # fluency + relevance + informativeness
    if args.rouge_weight > 0:
        reward = WeightedReward({reward: 1.0, RougeLReward(tokenizer): args.rouge_weight}, name="total")
    rl = ReinforceTrainer(policy, reward, PROMPT_LENGTH, RESPONSE_LENGTH, num_samples=4,
                          baseline="rloo", kl_coef=0.05, reference_policy=reference, gamma=0.8,
                          temperature=0.8, include_greedy=True, seed=args.seed)
    rl.compile(optimizer=keras.optimizers.Adam(5e-4, clipnorm=1.0))
    dataset = make_dataset(packed, 16, shuffle=True, seed=args.seed, drop_remainder=True).repeat()
    history = rl.fit(dataset, epochs=1, steps_per_epoch=args.rl_steps, verbose=2).history
    after = evaluate_policy(policy, tokenizer, validation, PROMPT_LENGTH, RESPONSE_LENGTH)

    print(f"\n{'validation':<14}{'ROUGE-L':>9}{'BLEU':>8}{'perplexity':>12}")
    for name, scores in (("after MLE", before), ("after RL", after)):
        print(f"{name:<14}{scores['rouge_l']:>9.4f}{scores['bleu']:>8.2f}{scores['perplexity']:>12.3f}")
    print("\nreward components at the end of RL (means over the stage):")
    for key, values in history.items():
        if key.startswith("reward"):
            print(f"  {key:<28}{values[-1]:.4f}")
    for (prompt, reference_reply), reply in list(zip(validation, after["replies"]))[:5]:
        print(f"\n> {prompt}\n  reply:     {reply}\n  reference: {reference_reply}")


if __name__ == "__main__":
    main()
