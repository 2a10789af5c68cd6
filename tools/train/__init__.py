"""Training recipe for pasu's default model pair (ESPnet trainer, synthetic SLURP corpus).

``pasu.tools.train.recipe`` runs the stages (tokens, stats, cloud, branch analysis,
device, packaging); ``pasu.tools.train.evaluate`` scores a packaged model with pasu's
own decoder. See ``docs/models.md``.
"""
