"""The one hybrid CTC/attention beam search both device and cloud run."""
