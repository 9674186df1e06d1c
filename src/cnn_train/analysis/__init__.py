"""What a model, a run or a dataset tells: evaluation, Grad-CAM, layer views, anatomy (parameters and FLOPs),
the data check and its duplicate search, and the figures (PNG) they draw.
"""
