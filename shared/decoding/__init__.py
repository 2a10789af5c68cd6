"""The one hybrid CTC/attention beam search both device and cloud run."""

from pasu.decoding.beam_search import BeamSearch, Hypothesis
from pasu.decoding.options import DecodingOptions
from pasu.decoding.recognizer import NBestEntry, Recognizer

__all__ = ["BeamSearch", "DecodingOptions", "Hypothesis", "NBestEntry", "Recognizer"]
