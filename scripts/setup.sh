#!/usr/bin/env bash
# Everything `make run` and `make test` need, installed if missing and built if stale:
# npm packages, the BPF object and native addon, the TypeScript build, the local stack's parts.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ $(id -u) -ne 0 ]]; then
	echo "setup: run as root (it installs Debian packages and loads BPF programs)" >&2
	exit 1
fi

# npm ci only when the lock file or our patches to packages (patches/, applied by npm's
# postinstall) changed since the last install.
stamp=node_modules/.tcpaudit-lock
if ! cat package-lock.json patches/*.patch | cmp -s - "$stamp" 2>/dev/null; then
	echo "setup: installing npm packages" >&2
	npm ci --no-audit --no-fund --loglevel=error
	cat package-lock.json patches/*.patch >"$stamp"
fi

bash scripts/setup-capture.sh
bash scripts/setup-stack.sh

echo "setup: compiling TypeScript" >&2
npx tsc -p tsconfig.json
echo "setup: done" >&2
