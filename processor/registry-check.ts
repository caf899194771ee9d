/**
 * Is the schema registry URL a Confluent-compatible API? A URL missing its API path (Apicurio
 * serves it under /apis/ccompat/v7) answers 404 for every schema id, which would send every
 * valid message to the dead letters; so the processor asks GET <url>/subjects first, which such
 * an API answers with 200 and a JSON array.
 */

export const CONFLUENT_PATH_HINT =
  'expected a Confluent-compatible API whose GET <url>/subjects answers a JSON array ' +
  '(for Apicurio: http://host:port/apis/ccompat/v7)';

export type RegistryHealth =
  | { ok: true }
  /** `reachable`: an HTTP answer came back, so the URL itself is wrong, not the network. */
  | { ok: false; reachable: boolean; detail: string };

export async function registryHealth(url: string, timeoutMs = 5000): Promise<RegistryHealth> {
  let response: Response;
  try {
    response = await fetch(`${url}/subjects`, {
      headers: { Accept: 'application/vnd.schemaregistry.v1+json, application/json' },
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    return { ok: false, reachable: false, detail: cause?.code ?? (err as Error).message };
  }
  const body = await response.text().catch(() => '');
  if (response.status !== 200) {
    // A 5xx is the registry in trouble, not a wrong URL: worth waiting for.
    return { ok: false, reachable: response.status < 500, detail: `HTTP ${response.status}` };
  }
  try {
    if (Array.isArray(JSON.parse(body))) return { ok: true };
  } catch {
    // not JSON: below
  }
  return { ok: false, reachable: true, detail: 'GET /subjects did not answer a JSON array' };
}

/** Waits up to `timeoutMs` for the registry to answer; throws at once when the URL is wrong. */
export async function waitForRegistry(
  url: string,
  timeoutMs: number,
  onRetry: (detail: string, attempt: number) => void,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt++) {
    const health = await registryHealth(url);
    if (health.ok) return;
    if (health.reachable) {
      throw new Error(
        `schema registry ${url} is not a Confluent-compatible API (${health.detail}): ` +
          CONFLUENT_PATH_HINT,
      );
    }
    if (Date.now() + 1000 > deadline) {
      throw new Error(
        `schema registry ${url} unreachable for ${Math.round(timeoutMs / 1000)} s: ${health.detail}`,
      );
    }
    onRetry(health.detail, attempt);
    await new Promise((r) => setTimeout(r, Math.min(1000 * 2 ** (attempt - 1), 10_000)));
  }
}
