"""koemo: Korean multimodal speech emotion recognition robust to ASR errors.

Audio goes through a speech recogniser (``koemo.asr``) and two pretrained encoders
(``koemo.encoders``); a fusion network (``koemo.fusion``) trained with consistency
regularization (``koemo.training``) predicts the emotion. ``koemo.data`` holds manifests,
labels and splits; ``koemo.evaluation`` the metrics and reports; ``koemo.serving`` the product.

In Python (names load on first use, so ``import koemo`` stays light)::

    import koemo
    rec = koemo.Recognizer.from_pretrained("default")   # or a bundle directory
    result = rec.predict_file("clip.wav")                # .label .probabilities .transcript ...
    koemo.train("emotiontts", fusion="linear")           # koemo train; koemo.reproduce(...) too
"""

__version__ = "0.1.0"

_API = ("Recognizer", "Result", "Utterance", "Contribution", "PRETRAINED", "train", "reproduce")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from koemo import api

        return getattr(api, name)
    raise AttributeError(f"module 'koemo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
