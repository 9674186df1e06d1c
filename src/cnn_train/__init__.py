"""cnn-train: config-driven training, evaluation and prediction for the classic CNNs."""

__version__ = "0.1.0"
