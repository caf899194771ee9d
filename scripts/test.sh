#!/usr/bin/env bash
# Every test, after `make setup`. The harness (test/harness.ts) finds or starts the stack:
# endpoints from the environment, else containers where Docker runs, else the native stack.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Files one at a time: the capture tests and the end-to-end test watch the same kernel
# tracepoint, and the machines this runs on have two cores.
exec node --test --test-concurrency=1 --test-reporter=spec dist/test/*.test.js
