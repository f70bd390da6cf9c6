# syntax=docker/dockerfile:1

# Both stages on the same base: Node 24.22, the LTS the whole suite also runs on in CI (.ci/run pins the
# same major.minor; test/deploy.test.ts checks they agree), Debian bookworm, slim.

# ---- build: TypeScript → dist/ --------------------------------------------------------------
FROM node:24.22-bookworm-slim AS build
WORKDIR /app

# Dependencies first (dev dependencies included: tsc), so this layer is reused until the lockfile changes.
COPY package.json package-lock.json ./
RUN npm ci

COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies, the compiled code and the contract ----------------------
FROM node:24.22-bookworm-slim AS runtime
ENV NODE_ENV=production \
    PORT=8080
WORKDIR /app

# --ignore-scripts: no production dependency has an install script (only esbuild, a dev dependency, does).
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts \
 && npm cache clean --force

COPY --from=build /app/dist ./dist
# Read at run time from the package root (src/routes/openapi.ts: ../../openapi.yaml from dist/routes/;
# src/routes/console.ts: ../../console/ likewise). The console is plain HTML, CSS and ES modules: no build.
COPY openapi.yaml ./
COPY console ./console

# The code stays root-owned and read-only for the service; only data/ (the fs driver's default
# DATA_DIR, used when running the image locally with STORAGE_DRIVER=fs) is writable.
RUN mkdir -p /app/data && chown node:node /app/data
USER node

# 8080: the API (PORT). 9091: Prometheus metrics (METRICS_PORT).
EXPOSE 8080 9091

# For plain `docker run` / compose; Fly.io ignores it and uses [[http_service.checks]] in fly.toml.
# Node's own fetch: the slim image has no curl or wget.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/healthz', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# node directly (not npm start, whose prestart would rebuild): SIGTERM reaches the process, which
# closes gracefully (close-with-grace). The same command as `npm start` (test/deploy.test.ts checks):
# a 2 MiB semi-space keeps V8's young generation from growing to 64 MiB or more (Node 24 grows it with
# the allocation rate of uploads in flight), which the memory bound of 16 uploads at once relies on.
CMD ["node", "--max-semi-space-size=2", "dist/server.js"]
