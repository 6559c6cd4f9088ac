#!/bin/bash
# Stand-in for NVIDIA's /opt/nvidia/nvidia_entrypoint.sh (written for this
# project, not copied): what the real one does that a CPU host can observe.
# Its parts in entrypoint.d run in name order (.txt printed, .sh sourced, so
# they can export variables), then the arguments run in its place, or bash
# when there are none.
shopt -s nullglob
for part in "$(dirname "$(readlink -f "$0")")"/entrypoint.d/*; do
  case "$part" in
    *.txt) cat "$part" ;;
    *.sh) source "$part" ;;
  esac
done
shopt -u nullglob
echo
if [ "$#" -eq 0 ]; then
  exec /bin/bash
fi
exec "$@"
