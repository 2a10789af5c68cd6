"""Training recipe for pasu's default model pair (ESPnet trainer, synthetic SLURP corpus).

``pasu.train.recipe`` runs the stages (tokens, stats, cloud, branch analysis,
device, packaging); ``pasu.train.evaluate`` scores a packaged model with pasu's
own decoder. See ``docs/models.md``.
"""
