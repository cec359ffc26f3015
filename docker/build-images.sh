#!/usr/bin/env bash
# Build the testbed's images: the local base (docker/build-base.sh) and the node image.
#
# Usage: docker/build-images.sh        (run by `make images` and by the Docker tests)
#
# Environment:
#   BASE_IMAGE   base of the node image (default testbed-base:bookworm, built here by
#                debootstrap when missing; set python:3.11-slim-bookworm where a
#                registry can be reached, and nothing is debootstrapped)
#   NODE_IMAGE   the node image's name (default testbed-node:latest)
#   BUILD_CA     CA bundle pip trusts while building (default: this machine's,
#                /etc/ssl/certs/ca-certificates.crt, so a TLS-intercepting proxy that
#                the machine trusts works inside the build too; empty: pip's own)
#
# The build context is a temporary folder holding only what the image copies (the
# sources, scenarios, docker/), so the checkout's .venv and runs/ never travel to the
# engine. Docker's layer cache keeps rebuilds to a few seconds when only the source
# changed, and to nothing when nothing did.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-testbed-base:bookworm}
NODE_IMAGE=${NODE_IMAGE:-testbed-node:latest}
BUILD_CA=${BUILD_CA-/etc/ssl/certs/ca-certificates.crt}

if [[ $BASE_IMAGE == testbed-base:* ]]; then
    docker/build-base.sh "$BASE_IMAGE"
fi

ctx=$(mktemp -d /var/tmp/testbed-build.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
tar -c --exclude=__pycache__ --exclude='*.pyc' \
    pyproject.toml testbed nodes topologies scenarios docker | tar -x -C "$ctx"
if [[ -n $BUILD_CA && -r $BUILD_CA ]]; then
    cp "$BUILD_CA" "$ctx/docker/build-ca.pem"
fi

old=$(docker image inspect -f '{{.Id}}' "$NODE_IMAGE" 2>/dev/null || true)
echo "build-images: building $NODE_IMAGE on $BASE_IMAGE" >&2
docker build -q -f "$ctx/docker/Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label org.testbed.image=node -t "$NODE_IMAGE" "$ctx" >/dev/null
new=$(docker image inspect -f '{{.Id}}' "$NODE_IMAGE")
if [[ -n $old && $old != "$new" ]]; then
    # The image this build replaced, now untagged: removed unless a container uses it.
    docker image rm "$old" >/dev/null 2>&1 || true
fi
echo "build-images: $NODE_IMAGE is ${new:7:12}" >&2
