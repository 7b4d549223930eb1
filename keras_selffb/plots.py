"""The PNG plots of a run: MLE perplexity per epoch, validation metrics per round."""

import os


def rounds_figure(rounds):
    """The validation metrics per self-feedback round, one axis per scale.

    ROUGE-L, the reward and any other 0-1 metric (distinct-n, self-BLEU,
    the judge's retrieval accuracy) share the first axis, BLEU (0-100) has
    the second, perplexity the third, and the counts (distinct greedy
    replies, mean reply length) the fourth, so no curve is flattened
    against another one's scale. Returns a matplotlib `Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = rounds[0]["metrics"]
    counts = ("val_distinct_replies", "val_mean_reply_length")
    panels = [
        ("validation ROUGE-L, reward, diversity (0-1)",
         [k for k in metrics if k not in ("val_bleu", "val_perplexity", *counts)]),
        ("validation BLEU (0-100)", [k for k in metrics if k == "val_bleu"]),
        ("validation perplexity (per token)", [k for k in metrics if k == "val_perplexity"]),
        ("distinct greedy replies, mean reply length (words)", [k for k in metrics if k in counts]),
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    x = [r["round"] for r in rounds]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    colors = {"val_bleu": "tab:green", "val_perplexity": "tab:red"}
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            ax.plot(x, [r["metrics"][key] for r in rounds], marker="o", label=key.removeprefix("val_"),
                    color=colors.get(key))
        ax.set_title(title)
        ax.set_xlabel("round (0 = after MLE)")
        ax.set_xticks(x)
        if len(keys) > 1:
            ax.legend()
    fig.tight_layout()
    return fig


def plot_rounds(rounds, path):
    """Writes `rounds_figure(rounds)` as a PNG (atomically: temporary file, then rename)."""
    import matplotlib.pyplot as plt

    fig = rounds_figure(rounds)
    try:
        fig.savefig(f"{path}.tmp", dpi=100, format="png")
        os.replace(f"{path}.tmp", path)
    finally:
        plt.close(fig)
    return path


def plot_curves(history, path):
    """Writes train/validation perplexity per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["perplexity"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, history["perplexity"], marker="o", label="train")
    if "val_perplexity" in history:
        ax.plot(epochs, history["val_perplexity"], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity (per token)")
    ax.set_yscale("log")
    ax.set_title("MLE training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
