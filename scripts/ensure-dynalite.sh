#!/usr/bin/env bash
# Install dynalite (tools/dynalite, from its lockfile) for the tests' second DynamoDB engine:
# it validates requests the way DynamoDB does, where moto is lenient. Needs Node.js 20+ and npm.
set -euo pipefail
cd "$(dirname "$0")/../tools/dynalite"
stamp=node_modules/.installed
if [ -f "$stamp" ] && [ "$stamp" -nt package-lock.json ]; then exit 0; fi
if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "dynalite needs Node.js 20+ and npm: install them first." >&2; exit 1
  fi
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' \
  || { echo "dynalite needs Node.js 20+ (found $(node --version))" >&2; exit 1; }
# In memory only: the LevelDB binding's install script is not needed.
npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
touch "$stamp"
