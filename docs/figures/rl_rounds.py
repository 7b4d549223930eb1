"""Draws docs/figures/rl_rounds.png from the runs measured in docs/reinforce.md.

The figures are copied from those runs' `metrics.json` (validation, greedy
decoding, seed 0 unless named); rerun `keras-selffb train` with the settings
in the legend to reproduce them.

    python docs/figures/rl_rounds.py
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# label: (validation ROUGE-L F after MLE and after rounds 1-3, perplexity likewise)
RUNS = {
    "15 MLE epochs (default)": ([0.0522, 0.0660, 0.0667, 0.0678], [6.778, 6.806, 6.860, 6.842]),
    "15 MLE epochs, seed 1": ([0.0584, 0.0703, 0.0643, 0.0696], [7.004, 7.098, 7.056, 7.127]),
    "24 MLE epochs": ([0.0871, 0.0765, 0.0806, 0.0841], [5.980, 6.110, 6.115, 6.105]),
    "24 MLE epochs, K=8": ([0.0871, 0.0872, 0.0880, 0.0871], [5.980, 6.067, 6.079, 6.063]),
    "30 MLE epochs": ([0.0844, 0.0834, 0.0827, 0.0818], [5.863, 5.953, 5.963, 5.991]),
    "30 MLE epochs, K=8": ([0.0844, 0.0857, 0.0834, 0.0896], [5.863, 5.935, 5.932, 5.937]),
}


def main():
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, (rouge, perplexity) in RUNS.items():
        style = "-o" if label.startswith("15") else "--s"
        left.plot(range(4), rouge, style, label=label)
        right.plot(range(4), perplexity, style, label=label)
    for axis, title in ((left, "validation ROUGE-L F (greedy)"), (right, "validation perplexity")):
        axis.set_xticks(range(4), ["MLE", "round 1", "round 2", "round 3"])
        axis.set_title(title)
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle("RL rounds (ROUGE-L reward, greedy candidate in each group) on the embedded corpus")
    fig.tight_layout()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rl_rounds.png")
    fig.savefig(path, dpi=100)
    print(path)


if __name__ == "__main__":
    main()
