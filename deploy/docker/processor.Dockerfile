# The processor image: `tcpaudit process` (and `query`). No capability, no native code.
# Build from the repository root:
#   docker build -f deploy/docker/processor.Dockerfile -t tcpaudit-processor:0.1.0 .

FROM node:20-bookworm AS build
WORKDIR /src
# patches/ before npm ci: its postinstall applies them (see patches/README.md).
COPY package.json package-lock.json ./
COPY patches ./patches
RUN npm ci --no-audit --no-fund --loglevel=error
COPY . .
RUN npx tsc -p tsconfig.json \
 && rm -rf dist/test dist/bench \
 && npm prune --omit=dev --no-audit --no-fund

# Run stage: Node only; no Debian package is added.
FROM node:20-bookworm-slim
RUN groupadd --system --gid 10001 tcpaudit \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin tcpaudit
WORKDIR /opt/tcpaudit
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/bin ./bin
COPY --from=build /src/schemas ./schemas
COPY --from=build /src/processor/migrations ./processor/migrations
ENV TCPAUDIT_HOME=/opt/tcpaudit NODE_ENV=production
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/node", "/opt/tcpaudit/bin/tcpaudit.js"]
CMD ["process"]
