"""pasu: hybrid edge-cloud speech understanding with pilot inference.

The `pasu` package is the repository's ``shared/`` folder: the code that both the
device agent (:mod:`pasu.device`) and the cloud worker (:mod:`pasu.cloud`) use —
model loading, audio and features, and the one decoder both sides run.
"""

__version__ = "0.1.0"
