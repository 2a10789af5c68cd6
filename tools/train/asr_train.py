"""ESPnet ASR training/inference entry with ``encoder: late_context`` registered.

``espnet2.bin.asr_train`` builds its ``--encoder`` choices from ESPnet's
registry at start-up, before any user code runs; this module registers our
encoder first, then hands over to ESPnet unchanged.  Use it where a recipe
calls ``python -m espnet2.bin.asr_train`` (asr.sh: ``--python`` wrapper or
edit the command), e.g.::

    python -m pasu.tools.train.asr_train --config conf/train_asr_late.yaml ...
"""

from __future__ import annotations

from collections.abc import Sequence

import pasu.encoders  # noqa: F401  (registers late_context)


def main(cmd: Sequence[str] | None = None) -> None:
    from espnet2.tasks.asr import ASRTask

    ASRTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
