# The two commands of the quick start: `make run` and `make test`. Both start from `make setup`,
# which installs what is missing and builds what changed, so a second run takes seconds.

.PHONY: setup build run test stack-up stack-down clean

setup:
	bash scripts/setup.sh

build:
	npx tsc -p tsconfig.json

run: setup
	bash scripts/run.sh

test: setup
	bash scripts/test.sh

stack-up: setup
	node bin/tcpaudit.js stack up

stack-down:
	node bin/tcpaudit.js stack down

clean:
	rm -rf dist native/build bpf/.output bpf/vmlinux.h
