"""One training run: `fit` tells the story; the session it builds, the step and epoch loops, schedules, EMA,
stopping rules, the lr range test, checkpoints in the run dir, transfer learning and the profiler.
"""
