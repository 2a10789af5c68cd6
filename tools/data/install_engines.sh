#!/usr/bin/env bash
# Install the TTS engines that `pasu data synth` uses (Debian/Ubuntu, apt).
#   training voices: espeak-ng (English voices + variants), flite (awb, rms)
#   test voices:     flite (kal, kal16, slt), festival (kal_diphone,
#                    ked_diphone, cmu_us_slt_arctic_hts)
# Usage: tools/data/install_engines.sh [--no-festival]   (as root, or with sudo)
set -euo pipefail

packages=(espeak-ng flite)
if [[ "${1:-}" != "--no-festival" ]]; then
  # festvox-kallpc16k: kal_diphone; festvox-kdlpc16k: ked_diphone;
  # festvox-us-slt-hts: cmu_us_slt_arctic_hts
  packages+=(festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to apt-get install" >&2; exit 1; }
  SUDO="sudo"
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "TTS engines already installed: ${packages[*]}"
fi
