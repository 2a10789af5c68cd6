#!/usr/bin/env bash
# Install the TTS engines that `pasu data synth` uses (Debian/Ubuntu, apt).
#   training voices: espeak-ng (English voices + variants), flite (awb, rms)
#   test voices:     flite (kal, kal16, slt), festival (kal_diphone,
#                    ked_diphone, cmu_us_slt_arctic_hts)
# and the virtual microphone tests/test_device_mic.py plays into (a PulseAudio
# null sink that PortAudio reaches through ALSA's `pulse` device).
# Usage: tools/data/install_engines.sh [--no-festival] [--no-mic]   (as root, or with sudo)
set -euo pipefail

packages=(espeak-ng flite)
if [[ " $* " != *" --no-festival "* ]]; then
  # festvox-kallpc16k: kal_diphone; festvox-kdlpc16k: ked_diphone;
  # festvox-us-slt-hts: cmu_us_slt_arctic_hts
  packages+=(festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)
fi
if [[ " $* " != *" --no-mic "* ]]; then
  packages+=(pulseaudio pulseaudio-utils libasound2-plugins libportaudio2)
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
  echo "already installed: ${packages[*]}"
fi
