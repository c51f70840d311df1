#!/usr/bin/env bash
# A stand-in for the Lambda Python base image, for `sam local invoke --skip-pull-image` where
# public.ecr.aws cannot be reached: a Debian bookworm root (debootstrap, from the Debian mirror)
# with its python3, AWS's runtime interface client (awslambdaric, from PyPI) in /var/runtime and
# a /var/runtime/bootstrap, imported under the tag SAM looks for. SAM adds its runtime interface
# emulator (aws-lambda-rie) and the layers on top, as it does with the official image.
#
# Kept between runs: nothing is built when the tag exists (the official image, pulled once, or
# this stand-in of the same recipe). Differences from the official image: Python 3.11 (Debian's)
# instead of the runtime's 3.12, so the layers are built for 3.11: the image's label
# chat-memory.python says so, and make local-build reads it.
#
# Usage: scripts/build-lambda-image.sh [python3.12] [x86_64|arm64]   (defaults: python3.12, this machine)
set -euo pipefail
RUNTIME=${1:-python3.12}
case "${2:-$(uname -m)}" in
  x86_64 | amd64) ARCH=x86_64 PLATFORM=x86_64 ;;
  arm64 | aarch64) ARCH=arm64 PLATFORM=aarch64 ;;
  *) echo "unsupported architecture ${2:-$(uname -m)}" >&2; exit 2 ;;
esac
TAG="public.ecr.aws/lambda/python:${RUNTIME#python}-$ARCH"  # what SAM CLI runs for a zip function
RECIPE=2  # bump when the image below changes: a stand-in of an older recipe is rebuilt
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

recipe=$(docker image inspect --format '{{ index .Config.Labels "chat-memory.stand-in" }}' "$TAG" 2>/dev/null || true)
if [ -n "$recipe" ] && [ "$recipe" != "<no value>" ]; then
  [ "$recipe" = "$RECIPE" ] && exit 0
  echo "rebuilding $TAG: stand-in recipe $recipe, now $RECIPE"
elif docker image inspect "$TAG" >/dev/null 2>&1; then
  exit 0  # the official image
fi
if [ "$PLATFORM" != "$(uname -m)" ]; then
  echo "$TAG: building for $ARCH needs an $ARCH machine (or binfmt emulation)" >&2; exit 1
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/lambda-root.XXXXXX")
trap 'rm -rf "$root"' EXIT
echo "building $TAG (debootstrap bookworm + awslambdaric; once per machine)"
debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
  || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
python_version=$(chroot "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# async-timeout: redis-py's asyncio needs it below Python 3.11.3 (bookworm has 3.11.2).
"${PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check --no-compile --target "$root/var/runtime" \
  --platform "manylinux_2_28_$PLATFORM" --platform "manylinux2014_$PLATFORM" \
  --python-version "$python_version" --implementation cp --only-binary=:all: \
  awslambdaric async-timeout
# The runtime API's address comes from the emulator; layers are on the path as on Lambda.
cat >"$root/var/runtime/bootstrap" <<EOF
#!/bin/sh
export PYTHONPATH="/var/runtime:/opt/python/lib/python$python_version/site-packages:/opt/python\${PYTHONPATH:+:\$PYTHONPATH}"
export LAMBDA_TASK_ROOT="\${LAMBDA_TASK_ROOT:-/var/task}"
cd "\$LAMBDA_TASK_ROOT"
exec /usr/bin/python3 -m awslambdaric "\${_HANDLER:-\$AWS_LAMBDA_FUNCTION_HANDLER}"
EOF
chmod 755 "$root/var/runtime/bootstrap"
mkdir -p "$root/var/task" "$root/opt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man
tar -C "$root" -c . | docker import \
  --change "ENV LAMBDA_TASK_ROOT=/var/task LAMBDA_RUNTIME_DIR=/var/runtime LANG=C.UTF-8 TZ=:UTC" \
  --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  --change "WORKDIR /var/task" \
  --change "LABEL chat-memory.stand-in=$RECIPE chat-memory.python=$python_version" \
  --change 'ENTRYPOINT ["/var/runtime/bootstrap"]' \
  - "$TAG" >/dev/null
echo "built $TAG"
