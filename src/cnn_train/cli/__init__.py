"""The console scripts: the only code that knows Hydra's globals (run dir, run mode, callbacks).

One module per command family, so a command imports only what it runs: `train` (cnn-train, cnn-lrfind),
`predict` (cnn-predict), `tools` (cnn-eval, cnn-export, cnn-summary, cnn-data, cnn-report) and `sweep`
(the callback that summarises a multirun).
"""
