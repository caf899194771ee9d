import { Client } from 'pg';
import { Kafka, logLevel } from 'kafkajs';
import { HOST, PORTS, PG_DATABASE, PG_PASSWORD, PG_USER, REGISTRY_CCOMPAT_PATH } from './endpoints';

/**
 * One health probe per service, each answering "does it serve what our code needs?" rather
 * than "is the port open?": a real login and query, a real metadata round trip, a real ccompat
 * request. Probes never throw; a failing probe is just `false` and the caller retries.
 */

const PROBE_TIMEOUT_MS = 2000;

export async function postgresHealthy(): Promise<boolean> {
  const client = new Client({
    host: HOST,
    port: PORTS.postgres,
    user: PG_USER,
    password: PG_PASSWORD,
    database: PG_DATABASE,
    connectionTimeoutMillis: PROBE_TIMEOUT_MS,
  });
  client.on('error', () => undefined); // a server shutting down mid-probe must not crash us
  try {
    await client.connect();
    const res = await client.query<{ ok: number }>('SELECT 1 AS ok');
    return res.rows[0]?.ok === 1;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

export async function kafkaHealthy(): Promise<boolean> {
  const kafka = new Kafka({
    clientId: 'tcpaudit-stack-probe',
    brokers: [`${HOST}:${PORTS.kafka}`],
    connectionTimeout: PROBE_TIMEOUT_MS,
    requestTimeout: PROBE_TIMEOUT_MS,
    retry: { retries: 0 },
    logLevel: logLevel.NOTHING, // failed probes are expected while the broker boots
  });
  const admin = kafka.admin();
  try {
    await admin.connect();
    const cluster = await admin.describeCluster();
    // A broker that answers metadata but has no active controller cannot create topics yet.
    return cluster.brokers.length > 0 && cluster.controller !== null && cluster.controller >= 0;
  } catch {
    return false;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

async function httpOk(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(PROBE_TIMEOUT_MS) });
    await res.arrayBuffer(); // drain, so the keep-alive socket is released
    return res.ok;
  } catch {
    return false;
  }
}

export async function registryHealthy(): Promise<boolean> {
  const base = `http://${HOST}:${PORTS.registry}`;
  // Quarkus readiness covers storage; the ccompat call proves the API our clients use is up.
  if (!(await httpOk(`${base}/health/ready`))) return false;
  return httpOk(`${base}${REGISTRY_CCOMPAT_PATH}/subjects`);
}
