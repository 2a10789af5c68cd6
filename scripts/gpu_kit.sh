#!/usr/bin/env bash
# Build the carry kit of the GPU path (scripts/train_gpu.sh; docs/models.md, "The GPU path").
#
# A lent GPU machine has Python 3.12 and torch 2.11 but no ESPnet and no TTS engine, reaches
# no registry, and receives at most 64 MiB: the working tree (about 61 MB of it, the shipped
# models included) plus the carried paths. So the kit is small and solid-compressed:
#
#   KIT/python.tar.xz   wheels (cp312, manylinux x86-64) of what the corpus and training steps
#                       import and that machine lacks (scripts/gpu_image_packages.txt lists what
#                       it has): ESPnet slimmed to the subpackages an ASR run imports, each wheel
#                       re-zipped uncompressed so xz compresses across all of them;
#   KIT/engines.tar.xz  espeak-ng from Debian's packages (apt-get download + dpkg -x): binary,
#                       libespeak-ng, libsonic, English data only, and a wrapper bin/espeak-ng
#                       that sets LD_LIBRARY_PATH and ESPEAK_DATA_PATH. libpcaudio (playback,
#                       which --stdout never uses, and whose ALSA/PulseAudio/X11 closure would
#                       not fit) is a no-op library compiled here. flite's voices (12.8 MB
#                       compressed) and festival do not fit: the corpus uses espeak-ng's 8
#                       English voices x 68 variants;
#   KIT/kit.json        contents, sizes, sha256.
#
# Needs: network to PyPI and Debian, gcc, xz. Usage: scripts/gpu_kit.sh [KIT_DIR]  (default build/gpu_kit)
set -euo pipefail
KIT=${1:-build/gpu_kit}
PY=${PY:-.venv/bin/python}
# What the corpus, training and conversion steps import beyond the image's packages (found by
# running them with only those: tests/test_train_gpu.py), at the versions of the project's venv,
# where they were tested. antlr4-python3-runtime 4.9 (hydra's, which ESPnet's ASR task imports)
# comes only as a source archive: built into a pure-Python wheel here.
WHEELS=(
  espnet configargparse typeguard humanfriendly soundfile cffi pycparser soxr librosa pooch
  platformdirs decorator torch-complex hydra-core omegaconf omniio
)
BUILT=(antlr4-python3-runtime)
# ESPnet's subpackages an ASR training run imports; the rest (speech LMs, dialogue, ESPnet3, recipes)
# stays behind.
ESPNET_KEEP=(
  espnet/__init__.py espnet/version.txt espnet2/__init__.py espnet2/bin/__init__.py espnet2/bin/asr_train.py
  espnet2/bin/asr_inference.py espnet2/asr espnet2/asr_transducer espnet2/beats espnet2/enh espnet2/fileio
  espnet2/gan_tts espnet2/iterators espnet2/layers espnet2/legacy espnet2/lm espnet2/main_funcs
  espnet2/optimizers espnet2/samplers espnet2/schedulers espnet2/slu espnet2/ssl espnet2/tasks
  espnet2/text espnet2/torch_utils espnet2/train espnet2/tts espnet2/utils espnet2/fst
)
pinned() { local n; for n in "$@"; do echo "$n==$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$n")"; done; }
PLATFORMS=()
for p in manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
  manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pasu-gpu-kit.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/dl" "$TMP/python/wheels" "$TMP/debs" "$TMP/root" "$TMP/engines/bin" "$TMP/engines/libexec" \
  "$TMP/engines/lib" "$KIT"

echo "== wheels (Python 3.12)"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$TMP/dl" $(pinned "${WHEELS[@]}")
"$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$TMP/dl" $(pinned "${BUILT[@]}")
"$PY" - "$TMP/dl" "$TMP/python/wheels" "${ESPNET_KEEP[@]}" <<'PY'
"""Re-zip every wheel uncompressed (xz then compresses the lot); ESPnet keeps ESPNET_KEEP only."""
import base64, hashlib, sys, zipfile
from pathlib import Path

src, dst, *keep = sys.argv[1:]
for whl in sorted(Path(src).glob("*.whl")):
    slim = whl.name.startswith("espnet-")
    with zipfile.ZipFile(whl) as zin:
        names = [n for n in zin.namelist() if not n.endswith("RECORD")]
        info = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        if slim:
            names = [n for n in names if ".dist-info/" in n or any(n == k or n.startswith(k + "/") for k in keep)]
        record = []
        with zipfile.ZipFile(Path(dst) / whl.name, "w", zipfile.ZIP_STORED) as zout:
            for n in names:
                data = zin.read(n)
                zout.writestr(n, data)
                digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                record.append(f"{n},sha256={digest},{len(data)}")
            zout.writestr(info, "\n".join(record + [f"{info},,"]) + "\n")
PY
tar -C "$TMP/python" -cf - wheels | xz -9e -T0 > "$KIT/python.tar.xz"

echo "== espeak-ng (Debian packages)"
(cd "$TMP/debs" && apt-get download espeak-ng libespeak-ng1 espeak-ng-data libsonic0 2>/dev/null)
for deb in "$TMP"/debs/*.deb; do dpkg -x "$deb" "$TMP/root"; done
LIB=$TMP/root/usr/lib/x86_64-linux-gnu
cp "$TMP/root/usr/bin/espeak-ng" "$TMP/engines/libexec/espeak-ng"
cp -L "$LIB/libespeak-ng.so.1" "$LIB/libsonic.so.0" "$TMP/engines/lib/"
cat > "$TMP/pcaudio.c" <<'C'
/* libpcaudio.so.0 without audio devices: espeak-ng links it for playback, pasu asks for --stdout. */
#include <stddef.h>
struct audio_object;
struct audio_object *create_audio_device_object(const char *d, const char *a, const char *n) { return NULL; }
int audio_object_open(struct audio_object *o, int f, unsigned r, unsigned char c) { return -1; }
void audio_object_close(struct audio_object *o) {}
void audio_object_destroy(struct audio_object *o) {}
int audio_object_write(struct audio_object *o, const void *d, size_t b) { return -1; }
int audio_object_drain(struct audio_object *o) { return 0; }
int audio_object_flush(struct audio_object *o) { return 0; }
const char *audio_object_strerror(struct audio_object *o, int e) { return "no audio device (pasu GPU kit)"; }
C
gcc -shared -fPIC -O2 -Wl,-soname,libpcaudio.so.0 -o "$TMP/engines/lib/libpcaudio.so.0" "$TMP/pcaudio.c"
DATA=$TMP/engines/share/espeak-ng-data
mkdir -p "$DATA/lang/gmw" "$DATA/voices"
cp "$LIB"/espeak-ng-data/{en_dict,phondata,phonindex,phontab,intonations} "$DATA/"
cp "$LIB"/espeak-ng-data/lang/gmw/en* "$DATA/lang/gmw/"
cp -r "$LIB/espeak-ng-data/voices/!v" "$DATA/voices/"
cat > "$TMP/engines/bin/espeak-ng" <<'SH'
#!/bin/sh
# espeak-ng from the pasu GPU kit: its own libraries and English data, nothing of the system's.
here=$(cd "${0%/*}/.." && pwd)  # builtins only: PATH may be anything
LD_LIBRARY_PATH="$here/lib" ESPEAK_DATA_PATH="$here/share" exec "$here/libexec/espeak-ng" "$@"
SH
chmod +x "$TMP/engines/bin/espeak-ng"
# it runs from the folder, on every English voice, with none of the system's engine files
for v in en-us en-gb en-gb-scotland en-gb-x-rp en-gb-x-gbclan en-gb-x-gbcwmd en-029 en-us-nyc; do
  "$TMP/engines/bin/espeak-ng" -v "$v+m3" -w "$TMP/check.wav" "turn on the lights" && [[ $(head -c 4 "$TMP/check.wav") == RIFF ]] \
    || { echo "gpu_kit.sh: espeak-ng from the kit failed on voice $v" >&2; exit 1; }
done
tar -C "$TMP" -cf - engines | xz -9e -T0 > "$KIT/engines.tar.xz"

"$PY" - "$KIT" "$TMP/python/wheels" <<'PY'
import hashlib, json, sys
from pathlib import Path

kit, wheels = Path(sys.argv[1]), Path(sys.argv[2])
files = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
         for p in sorted(kit.glob("*.tar.xz"))}
info = {"files": files, "bytes": sum(f["bytes"] for f in files.values()),
        "wheels": sorted(p.name for p in wheels.glob("*.whl")), "engines": ["espeak-ng"], "python": "3.12"}
(kit / "kit.json").write_text(json.dumps(info, indent=2) + "\n")
print(f"kit {kit}: {info['bytes'] / 2**20:.2f} MiB; {len(info['wheels'])} wheels; engines: espeak-ng")
PY
