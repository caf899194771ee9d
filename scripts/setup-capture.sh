#!/usr/bin/env bash
# Install the capture toolchain (Debian 12, root) if missing, then build the BPF object and the
# native addon. Idempotent: a second run installs nothing and rebuilds only what changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Debian 12 package names; each entry is "package:command-or-file that proves it is there".
needed=(
	"clang:/usr/bin/clang"
	"llvm:/usr/bin/llvm-strip"
	"libbpf-dev:/usr/include/bpf/libbpf.h"
	"libelf-dev:/usr/include/libelf.h"
	"zlib1g-dev:/usr/include/zlib.h"
	"bpftool:/usr/sbin/bpftool"
	"pkg-config:/usr/bin/pkg-config"
	"make:/usr/bin/make"
	"g++:/usr/bin/g++"
	"python3:/usr/bin/python3" # node-gyp runs gyp with it
	"bpftrace:/usr/bin/bpftrace" # independent oracle for test/capture-oracle.test.ts
)

missing=()
for entry in "${needed[@]}"; do
	pkg="${entry%%:*}"
	probe="${entry#*:}"
	[[ -e "$probe" ]] || missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "setup-capture: missing packages (${missing[*]}); run as root to install" >&2
		exit 1
	fi
	echo "setup-capture: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# BPF object and vmlinux.h; make decides what is stale.
make -s --no-print-directory -C "$root/bpf"

# The addon: node-gyp must never fetch headers, so point it at the system's Node headers.
addon="$root/native/build/Release/tcpaudit.node"
stale=1
if [[ -f "$addon" ]]; then
	stale=0
	for src in "$root"/native/*.cc "$root"/native/*.hh "$root"/native/binding.gyp \
		"$root"/bpf/tcpaudit.h; do
		[[ "$src" -nt "$addon" ]] && stale=1
	done
fi
if ((stale)); then
	nodedir="${TCPAUDIT_NODEDIR:-/usr}"
	gyp="$root/node_modules/.bin/node-gyp"
	(cd "$root/native" && "$gyp" rebuild --nodedir="$nodedir" --loglevel=warn)
fi
echo "setup-capture: ok ($root/bpf/.output/tcpaudit.bpf.o, $addon)" >&2
