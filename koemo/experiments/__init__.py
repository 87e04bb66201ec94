"""Experiments: the paper's grid as one resumable command (``koemo reproduce``).

- :mod:`~koemo.experiments.grid`: which models, training texts and protocols (names only);
- :mod:`~koemo.experiments.inputs`: transcripts and features loaded once, and inputs packs;
- :mod:`~koemo.experiments.runner`: the folds trained with :func:`koemo.training.run.run_folds`;
- :mod:`~koemo.experiments.results` and :mod:`~koemo.experiments.figures`: numbers and plots;
- :mod:`~koemo.experiments.report`: ``REPORT.md`` / ``REPORT.html``;
- :mod:`~koemo.experiments.reproduce`: the command's function, :func:`reproduce`.
"""
