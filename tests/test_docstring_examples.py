"""Every ``>>>`` example in the package's docstrings runs and prints what it shows (``doctest``), so that the
examples stay true as the code changes."""

import doctest
import importlib
import pkgutil

import pytest
import torch

import reldrop_transforms

MODULES = sorted(info.name for info in pkgutil.walk_packages(reldrop_transforms.__path__, "reldrop_transforms."))


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    torch.manual_seed(0)
    for test in finder.find(module, name, globs={"torch": torch, **vars(module)}):
        if test.filename and not test.filename.endswith(".py"):
            continue
        runner.run(test, out=lambda text: None)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} docstring examples of {name} failed"


def test_some_examples_ran():
    attempted = 0
    for name in MODULES:
        module = importlib.import_module(name)
        for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
            attempted += len(test.examples)
    assert attempted >= 40
