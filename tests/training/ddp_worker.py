"""Run by ``torchrun`` in test_distributed.py: the synthetic run, data-parallel."""

import sys

from koemo.training.trainer import init_distributed, train_fold
from tests.training.synth import feature_data, make_recipe

RECIPE = dict(fusion="mult", text="cr:fake", epochs=2, batch_size=10, grad_accum=2, lr=1e-3)

if __name__ == "__main__":
    init_distributed("cpu")
    data, fold = feature_data(n=40)
    train_fold(make_recipe(**RECIPE), fold, data, out_dir=sys.argv[1], progress=False)
