"""`python -m cnn_train.cli` is cnn-train (what torchrun runs).

The task is imported from its module, so that a launcher pickling it (submitit) refers to
cnn_train.cli.train._train instead of copying __main__.
"""

from cnn_train.cli import train

train.main()
