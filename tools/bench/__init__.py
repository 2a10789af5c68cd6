"""Benchmarks that print figures: pasu measured side by side with stock ESPnet."""
