"""bigmodel: one command from a YAML config to a trained, evaluated, explained model.

In Python::

    import bigmodel
    run = bigmodel.train("configs/fashion-cnn.yaml", ["train.epochs=3"])
    run.evaluate()["accuracy"]
    bigmodel.load("runs/fashion-cnn").predict(["shoe.png"])
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Run", "load", "train"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so `bigmodel --help` and `import bigmodel` do not load torch.
    if name in __all__:
        from bigmodel import api

        return getattr(api, name)
    raise AttributeError(f"module 'bigmodel' has no attribute {name!r}")
