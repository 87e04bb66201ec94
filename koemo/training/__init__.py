"""Training: losses (CE, consistency regularization), the trainer, bundles, feature glue.

- :func:`koemo.training.trainer.train_fold` trains one fold from plain feature mappings
  (:class:`koemo.training.data.FeatureData`) and writes a bundle;
- :func:`koemo.training.bundle.load_bundle` reads one back;
- :func:`koemo.training.run.train_recipe` does what ``koemo train`` does (manifest, split,
  features from the store, every requested fold).
"""
