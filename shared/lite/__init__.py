"""pasu's device model without torch or ESPnet: the exported graphs (``pasu export``) on onnxruntime.

Only numpy and onnxruntime are imported here, so this runs on an install without
torch (phones, small Arm boards).
"""

from pasu.lite.decoder import DecoderState, LiteDecoder
from pasu.lite.encoder import LiteEncoder, greedy_ctc
from pasu.lite.model import LiteModel, LiteModelError, LiteOptions
from pasu.lite.recognizer import LiteRecognizer

__all__ = [
    "DecoderState",
    "LiteDecoder",
    "LiteEncoder",
    "LiteModel",
    "LiteModelError",
    "LiteOptions",
    "LiteRecognizer",
    "greedy_ctc",
]
