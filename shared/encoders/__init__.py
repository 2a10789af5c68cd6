"""Encoders for pilot inference: late contextualization and its incremental runner.

Importing this package registers ``encoder: late_context`` with ESPnet's ASR
task, and ``encoder: late_branchformer`` (a Branchformer/E-Branchformer that
``pasu convert`` made late-contextualized) with its ASR and SLU tasks (see
:func:`register`), so ESPnet configs and ``ASRTask.build_model`` can name
them like any built-in encoder.
"""

from pasu.encoders.incremental import (
    IncrementalEncoder,
    IncrementalOptions,
    NotIncrementalError,
)
from pasu.encoders.late import LateContextEncoder

ENCODER_NAME = "late_context"


def register() -> None:
    """Add ``late_context`` -> :class:`LateContextEncoder` to ESPnet's encoder choices.

    Idempotent.  Must run before ``ASRTask.get_parser()`` builds its
    ``--encoder`` choices, which importing :mod:`pasu.encoders` guarantees.
    """
    from espnet2.tasks.asr import encoder_choices

    from pasu.encoders import branch

    encoder_choices.classes[ENCODER_NAME] = LateContextEncoder
    branch.register()


register()

__all__ = [
    "ENCODER_NAME",
    "IncrementalEncoder",
    "IncrementalOptions",
    "LateContextEncoder",
    "NotIncrementalError",
    "register",
]
