# One image for both roles (`tcpaudit produce`, `tcpaudit process`); the command picks the role.
# Build stage: clang and libbpf headers compile the CO-RE object and the native addon.
FROM node:20-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libbpf-dev libelf-dev zlib1g-dev \
      bpftool pkg-config make g++ python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN make -C bpf \
 && (cd native && ../node_modules/.bin/node-gyp rebuild --nodedir=/usr/local) \
 && npx tsc -p tsconfig.json \
 && npm prune --omit=dev

# Run stage: only the runtime libraries; no compiler, no headers.
FROM node:20-bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 libelf1 zlib1g \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/tcpaudit
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/bin ./bin
COPY --from=build /src/schemas ./schemas
COPY --from=build /src/processor/migrations ./processor/migrations
COPY --from=build /src/bpf/.output/tcpaudit.bpf.o ./bpf/.output/tcpaudit.bpf.o
COPY --from=build /src/native/build/Release/tcpaudit.node ./native/build/Release/tcpaudit.node
ENV TCPAUDIT_HOME=/opt/tcpaudit
# Non-root: the producer needs only CAP_BPF and CAP_PERFMON, granted by the runtime.
USER node
ENTRYPOINT ["node", "/opt/tcpaudit/bin/tcpaudit.js"]
CMD ["--help"]
