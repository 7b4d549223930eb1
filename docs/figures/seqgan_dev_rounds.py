"""Plot NLL-oracle and NLL-test per round of SeqGAN-oracle development runs.

    python docs/figures/seqgan_dev_rounds.py OUT.png NAME=RECORD.json [NAME=RECORD.json ...]

Each record is a `benchmarks/seqgan_oracle.py` JSON with one method; the
plot puts every run's training curves (NLL-oracle and NLL-test against the
round, the MLE generator at round 0, SeqGAN's published 8.736 as a line)
and its temperature curve (NLL-oracle against NLL-test, with the first
record's MLE curve) on one figure.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SEQGAN = 8.736  # SeqGAN, Table 1 (Yu et al. 2017)


def main(argv):
    if len(argv) < 2 or any("=" not in item for item in argv[1:]):
        raise SystemExit(__doc__)
    out, runs = argv[0], [item.split("=", 1) for item in argv[1:]]
    fig, (left, right, curves) = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, (name, path) in enumerate(runs):
        with open(path) as f:
            record = json.load(f)
        (curve,) = record["methods"].values()
        left.plot(curve["round"], curve["nll_oracle"], "o-", ms=3, color=f"C{i}", label=name)
        right.plot(curve["round"], curve["nll_test"], "s--", ms=3, color=f"C{i}", label=name)
        temperature = record["temperature_curves"]
        if i == 0:
            mle = temperature["MLE"]
            curves.plot(mle["nll_test"], mle["nll_oracle"], "k^:", ms=4, label="MLE")
            for t, x, y in zip(mle["temperature"], mle["nll_test"], mle["nll_oracle"]):
                curves.annotate(f"{t:.1f}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        (points,) = (v for k, v in temperature.items() if k != "MLE")
        curves.plot(points["nll_test"], points["nll_oracle"], "o-", ms=3, color=f"C{i}", label=name)
    left.axhline(SEQGAN, color="black", lw=0.8, ls=":", label="published SeqGAN 8.736")
    left.set_ylabel("NLL-oracle (quality; lower is better)")
    right.set_ylabel("NLL-test (coverage; lower is better)")
    for ax in (left, right):
        ax.set_xlabel("self-feedback round (0: the MLE generator)")
        ax.legend(fontsize=7)
    curves.set_xlabel("NLL-test at T = 0.7 ... 1.3 (coverage)")
    curves.set_ylabel("NLL-oracle (quality)")
    curves.set_title("Temperature curves (below MLE's is better)", fontsize=9)
    curves.legend(fontsize=7)
    fig.suptitle(f"SeqGAN oracle, development seed {record['seed']}: evaluations every 10 rounds")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
