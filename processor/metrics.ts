import http from 'node:http';
import client from 'prom-client';
import type { Logger } from '../common/log';

/** The processor's Prometheus metrics, in a registry of their own (tests may build several). */
export class ProcessorMetrics {
  readonly registry = new client.Registry();
  readonly events = new client.Counter({
    name: 'tcpaudit_processor_events_total',
    help: 'State changes written to tcp_events',
    registers: [this.registry],
  });
  readonly duplicates = new client.Counter({
    name: 'tcpaudit_processor_duplicates_total',
    help: 'Redelivered state changes that changed nothing',
    registers: [this.registry],
  });
  readonly deadLetters = new client.Counter({
    name: 'tcpaudit_processor_dead_letters_total',
    help: 'Messages sent to the dead letters',
    registers: [this.registry],
  });
  readonly gaps = new client.Counter({
    name: 'tcpaudit_processor_capture_gaps_total',
    help: 'Capture gap records stored',
    registers: [this.registry],
  });
  readonly batchSeconds = new client.Histogram({
    name: 'tcpaudit_processor_batch_seconds',
    help: 'Time to decode and commit one batch',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly lag = new client.Gauge({
    name: 'tcpaudit_processor_consumer_lag',
    help: 'Messages behind the high watermark, per partition',
    labelNames: ['topic', 'partition'],
    registers: [this.registry],
  });
  readonly endToEnd = new client.Histogram({
    name: 'tcpaudit_processor_end_to_end_seconds',
    help: 'Kernel event time to committed row',
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300],
    registers: [this.registry],
  });
  readonly expired = new client.Counter({
    name: 'tcpaudit_processor_expired_total',
    help: 'Open connections marked expired',
    registers: [this.registry],
  });
}

export interface HealthSource {
  /** True while the consumer is in its group and fetching. */
  consuming(): boolean;
  /** Resolves when the database answers. */
  databaseAnswers(): Promise<boolean>;
}

/** /metrics and /healthz on host:port (127.0.0.1 by default: no exposure beyond the host). */
export function serveMetrics(
  metrics: ProcessorMetrics,
  health: HealthSource,
  port: number,
  host: string,
  log: Logger,
): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') {
      res.writeHead(405).end();
    } else if (url === '/metrics') {
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { 'Content-Type': metrics.registry.contentType }).end(text),
        (err) => res.writeHead(500).end(String(err)),
      );
    } else if (url === '/healthz') {
      const consuming = health.consuming();
      health
        .databaseAnswers()
        .catch(() => false)
        .then((db) => {
          const ok = consuming && db;
          res
            .writeHead(ok ? 200 : 503, { 'Content-Type': 'application/json' })
            .end(JSON.stringify({ ok, consuming, database: db }));
        });
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      log.info('metrics listening', { host, port: (server.address() as { port: number }).port });
      resolve(server);
    });
  });
}
