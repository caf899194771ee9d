import fs from 'node:fs';
import avro from 'avsc';
import { SchemaRegistry, SchemaType, COMPATIBILITY } from '@kafkajs/confluent-schema-registry';
import { schemaPath } from './paths';

export const VALUE_SCHEMA_FILE = 'tcp-state-change.avsc';

/** Subject naming of Confluent's TopicNameStrategy: the value schema of topic T is "T-value". */
export function valueSubject(topic: string): string {
  return `${topic}-value`;
}

export function loadValueSchema(file = VALUE_SCHEMA_FILE): { text: string; type: avro.Type } {
  const text = fs.readFileSync(schemaPath(file), 'utf8');
  return { text, type: avro.Type.forSchema(JSON.parse(text)) };
}

/** Longest wait for one registry request: a registry that accepts and never answers. */
export const REGISTRY_TIMEOUT_MS = 10_000;
/** Attempts per registry call at start-up, with a doubling pause between them. */
export const REGISTRY_ATTEMPTS = 3;
const RETRY_PAUSE_MS = 500;
/** Statuses worth another try (as platformatic/kafka's registry); anything else is an answer. */
const TRANSIENT_STATUS = new Set([408, 425, 429, 500, 502, 503, 504]);

export interface RegistryCallOptions {
  timeoutMs?: number;
  attempts?: number;
  /** Told of each failed attempt: (message, { url, attempt, error }). */
  onRetry?: (message: string, fields: Record<string, unknown>) => void;
}

/** The registry did not answer (timeouts, refused connections) or answered only with 5xx. */
export class RegistryUnavailableError extends Error {
  readonly code = 'TCPAUDIT_REGISTRY_UNAVAILABLE';
  constructor(
    message: string,
    readonly url: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'RegistryUnavailableError';
  }
}

/** The registry answered, but not as a Confluent-compatible one (wrong URL or wrong server). */
export class RegistryApiError extends Error {
  readonly code = 'TCPAUDIT_REGISTRY_API';
  constructor(
    message: string,
    readonly url: string,
  ) {
    super(message);
    this.name = 'RegistryApiError';
  }
}

/**
 * fetch with a timeout per attempt, retried on network errors, timeouts and transient statuses,
 * each failed attempt reported with its URL. Resolves with the first other response (2xx or
 * not: a 404 or 409 is the registry's answer, for the caller to read).
 */
export async function registryFetch(
  url: string,
  init: RequestInit = {},
  opts: RegistryCallOptions = {},
): Promise<Response> {
  const timeoutMs = opts.timeoutMs ?? REGISTRY_TIMEOUT_MS;
  const attempts = opts.attempts ?? REGISTRY_ATTEMPTS;
  let last = '';
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      const response = await fetch(url, { ...init, signal: AbortSignal.timeout(timeoutMs) });
      if (!TRANSIENT_STATUS.has(response.status)) return response;
      await response.arrayBuffer().catch(() => undefined);
      last = `HTTP ${response.status}`;
    } catch (err) {
      const e = err as Error & { cause?: { code?: string; message?: string } };
      last =
        e.name === 'TimeoutError'
          ? `no answer within ${timeoutMs} ms`
          : (e.cause?.code ?? e.cause?.message ?? e.message);
    }
    opts.onRetry?.('schema registry request failed', {
      url,
      method: init.method ?? 'GET',
      attempt,
      of: attempts,
      error: last,
    });
    if (attempt < attempts)
      await new Promise((r) => setTimeout(r, RETRY_PAUSE_MS * 2 ** (attempt - 1)));
  }
  throw new RegistryUnavailableError(
    `schema registry ${url} unreachable after ${attempts} attempts: ${last}`,
    url,
  );
}

/**
 * What GET <url>/subjects says of a URL: a Confluent-compatible API answers 200 with a JSON
 * array. `reachable` with `ok: false`: an answer came back, so the URL or the server is wrong
 * and waiting will not help (a 5xx is the registry in trouble: worth waiting for).
 */
export type RegistryHealth = { ok: true } | { ok: false; reachable: boolean; detail: string };

function subjectsAnswer(status: number, body: string): RegistryHealth {
  if (status === 404) {
    // Apicurio answers 404 at its root: the Confluent API lives under /apis/ccompat/v7.
    return {
      ok: false,
      reachable: true,
      detail:
        'answered 404 for /subjects: the URL probably lacks /apis/ccompat/v7 ' +
        "(Apicurio's Confluent-compatible API)",
    };
  }
  if (status >= 500) return { ok: false, reachable: false, detail: `answered HTTP ${status}` };
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = null;
  }
  if (status === 200 && Array.isArray(parsed)) return { ok: true };
  return {
    ok: false,
    reachable: true,
    detail:
      `does not speak the Confluent API: GET /subjects gave ${status} ` +
      `${JSON.stringify(body.slice(0, 120))}, not a JSON array`,
  };
}

/**
 * Start-up check of the producer: is `url` a Confluent-compatible API? Retries what
 * registryFetch retries, then throws RegistryUnavailableError or RegistryApiError.
 */
export async function checkRegistry(url: string, opts: RegistryCallOptions = {}): Promise<void> {
  const response = await registryFetch(`${url}/subjects`, {}, opts);
  const health = subjectsAnswer(response.status, await response.text().catch(() => ''));
  if (!health.ok) throw new RegistryApiError(`schema registry ${url} ${health.detail}`, url);
}

/** One probe, no retry: for a caller that decides itself (the processor's decoder, its wait). */
export async function registryHealth(url: string, timeoutMs = 5000): Promise<RegistryHealth> {
  let response: Response;
  try {
    response = await fetch(`${url}/subjects`, {
      headers: { Accept: 'application/vnd.schemaregistry.v1+json, application/json' },
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    return { ok: false, reachable: false, detail: cause?.code ?? (err as Error).message };
  }
  return subjectsAnswer(response.status, await response.text().catch(() => ''));
}

/**
 * Start-up check of the processor, which may start before the registry: waits up to
 * `timeoutMs` for an answer, but throws at once when one comes back and says the URL is wrong.
 */
export async function waitForRegistry(
  url: string,
  timeoutMs: number,
  onRetry: (detail: string, attempt: number) => void,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt++) {
    const health = await registryHealth(url);
    if (health.ok) return;
    if (health.reachable)
      throw new RegistryApiError(`schema registry ${url} ${health.detail}`, url);
    if (Date.now() + 1000 > deadline) {
      const waited = Math.round(timeoutMs / 1000);
      throw new RegistryUnavailableError(
        `schema registry ${url} unreachable for ${waited} s: ${health.detail}`,
        url,
      );
    }
    onRetry(health.detail, attempt);
    await new Promise((r) => setTimeout(r, Math.min(1000 * 2 ** (attempt - 1), 10_000)));
  }
}

export function createRegistry(url: string, timeoutMs = REGISTRY_TIMEOUT_MS): SchemaRegistry {
  // The client retries transient failures itself; a short budget keeps start-up errors prompt.
  // Each request gets a timeout: without one a registry that accepts and never answers hangs
  // the caller for good.
  const timeout = () => ({
    prepareRequest: (next: () => Promise<{ enhance(extras: { timeout: number }): unknown }>) =>
      next().then((request) => request.enhance({ timeout: timeoutMs })),
  });
  return new SchemaRegistry({
    host: url,
    retry: { retries: 3, initialRetryTimeInSecs: 0.2 },
    middlewares: [timeout as never],
  });
}

export interface RegisteredValueSchema {
  id: number;
  type: avro.Type;
}

/**
 * Registers the value schema under the topic's subject with BACKWARD compatibility, so that a
 * later schema version must still read what earlier producers wrote.
 */
export async function registerValueSchema(
  registry: SchemaRegistry,
  registryUrl: string,
  topic: string,
  opts: RegistryCallOptions = {},
): Promise<RegisteredValueSchema> {
  const { text, type } = loadValueSchema();
  await setCompatibility(registryUrl, valueSubject(topic), COMPATIBILITY.BACKWARD, opts);
  const { id } = await registry.register(
    { type: SchemaType.AVRO, schema: text },
    { subject: valueSubject(topic), compatibility: COMPATIBILITY.BACKWARD },
  );
  return { id, type };
}

/**
 * Sets a subject's compatibility level before the client registers under it. The client checks
 * GET /config/{subject} and insists on 404 or its own level: Apicurio answers a subject with no
 * level of its own with 200 and the global level, which the client would take as a mismatch.
 */
export async function setCompatibility(
  registryUrl: string,
  subject: string,
  level: string,
  opts: RegistryCallOptions = {},
) {
  const url = `${registryUrl}/config/${encodeURIComponent(subject)}`;
  const response = await registryFetch(
    url,
    {
      method: 'PUT',
      headers: { 'Content-Type': 'application/vnd.schemaregistry.v1+json' },
      body: JSON.stringify({ compatibility: level }),
    },
    opts,
  );
  if (!response.ok) {
    const body = await response.text().catch(() => '');
    throw new Error(
      `schema registry refused compatibility ${level} for ${subject}: ` +
        `${response.status} ${body.slice(0, 200)}`,
    );
  }
}

/** Confluent wire format: magic byte 0, the schema id as a 4-byte big-endian int, the payload. */
export function frame(schemaId: number, payload: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + payload.length);
  out.writeUInt8(0, 0);
  out.writeUInt32BE(schemaId, 1);
  payload.copy(out, 5);
  return out;
}
