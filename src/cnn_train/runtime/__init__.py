"""What everything else stands on: user errors, atomic files, the machine (device, precision, threads),
processes of one run (torchrun), stop signals and experiment trackers. Imports nothing else of cnn_train.
"""
