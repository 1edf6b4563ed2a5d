#!/bin/sh
# Print a Python for the virtualenv: with no argument, the newest >= 3.11 on this machine
# (3.12+ gets the newest ansible-core; 3.11 gets ansible-core 2.19); with an argument such
# as 3.11, exactly that version (exit 1 when there is none). pyenv shims are skipped: they
# fail for versions that are installed but not active.
want=${1:-}
for candidate in python3.14 /root/.pyenv/versions/3.14*/bin/python3 \
    python3.13 /root/.pyenv/versions/3.13*/bin/python3 \
    python3.12 /root/.pyenv/versions/3.12*/bin/python3 \
    python3.11 /root/.pyenv/versions/3.11*/bin/python3 /usr/bin/python3 python3; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if [ -n "$want" ]; then
    check="import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$want'.split('.'))))"
  else
    check="import sys; sys.exit(sys.version_info < (3, 11))"
  fi
  if "$path" -c "import venv; $check" 2>/dev/null; then
    echo "$path"; exit 0
  fi
done
echo "no Python ${want:->= 3.11} found" >&2
exit 1
