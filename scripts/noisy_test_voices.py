"""test_voices' sentences and voices in test_hard's noise: a diagnostic split.

test_hard differs from test_voices in two ways at once (held-out templates, and
noise with some reverberation). This split has the noise without the held-out
templates: the first N utterances of seed 0's test_voices plan, each rendered
with a fresh draw of test_hard's augmentation. What a model loses from
test_voices to here is the noise; from here to test_hard, the templates.

Usage: .venv/bin/python scripts/noisy_test_voices.py OUT [N=300]   (writes OUT/tv_noisy)
"""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from pasu.tools.data import synth as S
from pasu.tools.data.engines import detect_engines
from pasu.tools.data.grammar import Grammar

out, n = Path(sys.argv[1]).resolve(), int(sys.argv[2]) if len(sys.argv) > 2 else 300
opts = S.SynthOptions(out_dir=out, seed=0, splits=("test_voices",))
grammar, engines = Grammar.load(), detect_engines()
rng = np.random.default_rng(1234)
plans = [
    replace(p, aug=S._hard_aug(rng), path=out / "audio" / f"{p.utt_id}.flac")
    for p in S.plan_corpus(opts, grammar, engines)["test_voices"][:n]
]
bank = [S._babble_clip(item)[1] for item in enumerate(S._babble_plan(opts, grammar, engines))]
seconds = {}
for p in tqdm(plans, desc="rendering"):
    x = S.render(p, bank)
    p.path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(p.path, x, S.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    seconds[p.utt_id] = x.size / S.SAMPLE_RATE
S.write_data_dir(out / "tv_noisy", plans, seconds)
print(f"{len(plans)} utterances in {out / 'tv_noisy'}")
