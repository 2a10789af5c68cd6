"""Data for pasu: a synthetic SLURP-style spoken-command corpus (`pasu data synth`).

Modules: grammar (intents, templates, fillers), engines (espeak-ng, flite,
festival; the voice rule), augment (waveform augmentation), synth (planning,
rendering, ESPnet data dirs), cli (the `pasu data` commands).
"""
