"""The `Example:` sections of the metric docstrings run and hold."""

import doctest
import importlib

import pytest

MODULES = [
    "keras_selffb.text.segmentation",
    "keras_selffb.metrics.rouge",
    "keras_selffb.metrics.bleu",
    "keras_selffb.metrics.perplexity",
    "keras_selffb.metrics.distinct",
    "keras_selffb.metrics.rouge_l_metric",
    "keras_selffb.metrics.bleu_metric",
    "keras_selffb.metrics.perplexity_metric",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, globs=dict(vars(module)),
                             optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
