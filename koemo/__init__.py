"""koemo: Korean multimodal speech emotion recognition robust to ASR errors.

Audio goes through a speech recogniser (``koemo.asr``) and two pretrained encoders
(``koemo.encoders``); a fusion network (``koemo.fusion``) trained with consistency
regularization (``koemo.training``) predicts the emotion. ``koemo.data`` holds manifests,
labels and splits; ``koemo.evaluation`` the metrics and reports; ``koemo.serving`` the product.
"""

__version__ = "0.1.0"
