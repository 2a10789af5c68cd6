"""Offload-rate experiments: how much must a device offload to reach a given accuracy, at what latency."""
