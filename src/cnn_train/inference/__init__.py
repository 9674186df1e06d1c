"""From a checkpoint to an answer: the self-describing checkpoint, the one inference computation (`infer`),
prediction and export. What cnn-predict, cnn-eval, the export check and training's own validation share.
"""
