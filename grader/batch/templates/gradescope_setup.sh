#!/usr/bin/env bash
# Gradescope runs this once, as root, while building the autograder image (Ubuntu 22.04 or 24.04).
# Made by `labkit bundle --gradescope {{LAB}}`: installs Python >= 3.11 and the kit (in kit/, without
# the reference solutions) into /autograder/venv, and what isolating a submission needs (bubblewrap,
# util-linux's setpriv/prlimit, nftables): run_autograder refuses to grade without it. No Docker:
# grading uses the native runtime.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
PY=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    PY="$candidate"; break
  fi
done
if [ -z "$PY" ]; then  # Ubuntu 22.04 ships 3.10; 3.11 is in its archive
  apt-get install -y -qq python3.11 python3.11-venv
  PY=python3.11
fi
apt-get install -y -qq make git bubblewrap util-linux nftables {{APT_PACKAGES}}
apt-get install -y -qq "$PY-venv" 2>/dev/null || apt-get install -y -qq python3-venv
"$PY" -m venv /autograder/venv
/autograder/venv/bin/pip install -q --upgrade pip
# editable: the kit finds its labs/ next to its code
/autograder/venv/bin/pip install -q -e /autograder/source/kit
/autograder/venv/bin/labkit labs
