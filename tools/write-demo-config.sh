#!/usr/bin/env bash
# make demo: the host's configuration file, so that every command of the README works as typed
# afterwards (the examples' images are in build/images, outside the manifest directory).
# Written only when there is none; an existing file is left as it is, with a hint.
set -euo pipefail
images="$(cd "$(dirname "$0")/.." && pwd)/build/images"
config="${RECONCILER_CONFIG-/etc/reconciler/config.yaml}"
[ -n "$config" ] || exit 0
if [ -e "$config" ]; then
  if ! grep -qF "$images" "$config"; then
    echo "demo: $config does not list $images under image-dir: add it there for the" \
      "README's commands, or pass --image-dir $images" >&2
  fi
  exit 0
fi
mkdir -p "$(dirname "$config")"
umask 022
cat >"$config" <<CONFIG
# The host's settings for every reconcile command (see the README, "Options").
# Written by make demo: the examples' images live outside the manifest directory.
image-dir: [$images]
CONFIG
echo "demo: wrote $config (image-dir: $images)"
