# The producer image: `tcpaudit produce` on one host (also `capture` and `doctor`).
# Build from the repository root, on a build host whose kernel has BTF:
#   docker build -f deploy/docker/producer.Dockerfile -t tcpaudit-producer:0.1.0 .

# Build stage: clang and the libbpf headers compile the CO-RE object and the native addon.
FROM node:20-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev libelf-dev zlib1g-dev \
      bpftool pkg-config make g++ python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# patches/ before npm ci: its postinstall applies them (see patches/README.md).
COPY package.json package-lock.json ./
COPY patches ./patches
RUN npm ci --no-audit --no-fund --loglevel=error
COPY . .
# vmlinux.h is dumped here from the build host's BTF (bpf/Makefile), never taken from the
# context (.dockerignore drops it). The object is CO-RE: libbpf relocates its field offsets
# against the BTF of the kernel it loads on, so the build host's kernel only has to have
# every type the program names, and any BTF kernel >= 5.8 can build it.
RUN test -r /sys/kernel/btf/vmlinux \
 || { echo 'build: /sys/kernel/btf/vmlinux is missing; build on a host whose kernel has BTF' >&2; \
      exit 1; }
RUN make -C bpf \
 && (cd native && ../node_modules/.bin/node-gyp rebuild --nodedir=/usr/local --loglevel=warn) \
 && npx tsc -p tsconfig.json \
 && rm -rf dist/test dist/bench \
 && npm prune --omit=dev --no-audit --no-fund

# Run stage: the runtime libraries of the addon, nothing to compile with.
FROM node:20-bookworm-slim
# Non-root containers lose added capabilities when their first program starts (neither Docker
# nor Kubernetes sets ambient capabilities), so the entry point is a copy of setpriv whose file
# capabilities are CAP_BPF and CAP_PERFMON "permitted" only (no effective bit: without them it
# still starts, and says so). It makes both ambient and starts node, which then holds them.
# libcap2-bin is only needed for setcap and goes again.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 libelf1 zlib1g libcap2-bin \
 && cp /usr/bin/setpriv /usr/local/bin/tcpaudit-caps \
 && setcap cap_bpf,cap_perfmon=p /usr/local/bin/tcpaudit-caps \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tcpaudit \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin tcpaudit \
 && mkdir -p /var/lib/tcpaudit/spool \
 && chown 10001:10001 /var/lib/tcpaudit/spool
WORKDIR /opt/tcpaudit
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/bin ./bin
COPY --from=build /src/schemas ./schemas
COPY --from=build /src/bpf/.output/tcpaudit.bpf.o ./bpf/.output/tcpaudit.bpf.o
COPY --from=build /src/native/build/Release/tcpaudit.node ./native/build/Release/tcpaudit.node
# Memory settings only the command line and the environment can give: producer/runtime-settings.ts.
ENV TCPAUDIT_HOME=/opt/tcpaudit NODE_ENV=production MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/tcpaudit-caps", "--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon", "--", "/usr/local/bin/node", "--max-semi-space-size=4", "/opt/tcpaudit/bin/tcpaudit.js"]
CMD ["produce"]
