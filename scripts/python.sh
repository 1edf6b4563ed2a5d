#!/bin/sh
# Print the newest Python >= 3.11 on this machine (3.12+ gets the newest ansible-core;
# 3.11 gets ansible-core 2.19). pyenv shims are skipped: they fail for versions that
# are installed but not active.
for candidate in python3.14 python3.13 python3.12 \
    /root/.pyenv/versions/3.13*/bin/python3 /root/.pyenv/versions/3.12*/bin/python3 \
    /usr/bin/python3 python3; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if "$path" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "$path"; exit 0
  fi
done
echo "no Python >= 3.11 found" >&2
exit 1
