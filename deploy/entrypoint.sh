#!/bin/sh
# The image's entrypoint (under tini): refuse to start Ray without token authentication, then run the command.
# `ray start` (head or worker) needs RAY_AUTH_MODE=token (set in the image) and a token in RAY_AUTH_TOKEN or the
# file RAY_AUTH_TOKEN_PATH names: without one, anyone who reaches the GCS or the job API could run code here.
set -eu
case "${1:-} ${2:-}" in
  "ray start")
    if [ "${RAY_AUTH_MODE:-}" != "token" ]; then
      echo "facerank image: RAY_AUTH_MODE must be token (it is '${RAY_AUTH_MODE:-}'); refusing to start Ray" >&2
      exit 2
    fi
    if [ -z "${RAY_AUTH_TOKEN:-}" ] && { [ -z "${RAY_AUTH_TOKEN_PATH:-}" ] || [ ! -s "${RAY_AUTH_TOKEN_PATH}" ]; }; then
      echo "facerank image: no Ray token (set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, see docs/cluster.md); refusing to start Ray" >&2
      exit 2
    fi
    ;;
esac
exec "$@"
