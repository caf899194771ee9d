import http from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** Where events were lost: in the kernel ring, in the memory queue, or by the full spool. */
export type DropStage = 'kernel' | 'user_queue' | 'spool';

/** The producer's Prometheus metrics, on a registry of their own (not prom-client's global). */
export class ProducerMetrics {
  readonly registry = new Registry();
  readonly captured = new Counter({
    name: 'tcpaudit_producer_events_captured_total',
    help: 'State changes handed over by the capture.',
    registers: [this.registry],
  });
  readonly published = new Counter({
    name: 'tcpaudit_producer_events_published_total',
    help: 'State changes acknowledged by Kafka (acks=all).',
    registers: [this.registry],
  });
  readonly spooled = new Counter({
    name: 'tcpaudit_producer_events_spooled_total',
    help: 'State changes written to the on-disk spool.',
    registers: [this.registry],
  });
  readonly dropped = new Counter({
    name: 'tcpaudit_producer_events_dropped_total',
    help: 'State changes lost, by stage; each loss is also published as a gap record.',
    labelNames: ['stage'] as const,
    registers: [this.registry],
  });
  readonly gapsPublished = new Counter({
    name: 'tcpaudit_producer_gaps_published_total',
    help: 'Gap records acknowledged by Kafka.',
    registers: [this.registry],
  });
  readonly sendErrors = new Counter({
    name: 'tcpaudit_producer_send_errors_total',
    help: 'Produce requests that failed and will be retried.',
    registers: [this.registry],
  });
  readonly spoolBytes = new Gauge({
    name: 'tcpaudit_producer_spool_bytes',
    help: 'Bytes in the on-disk spool.',
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: 'tcpaudit_producer_queue_depth',
    help: 'State changes held in memory, waiting for Kafka.',
    registers: [this.registry],
  });
  readonly kafkaUp = new Gauge({
    name: 'tcpaudit_producer_kafka_up',
    help: '1 while the last produce request succeeded, 0 after a failure.',
    registers: [this.registry],
  });
  readonly publishLatency = new Histogram({
    name: 'tcpaudit_producer_publish_latency_seconds',
    help: 'Time of one produce request, from send to acknowledgement by all in-sync replicas.',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly batchSize = new Histogram({
    name: 'tcpaudit_producer_batch_size',
    help: 'State changes per produce request.',
    buckets: [1, 10, 100, 500, 1000, 2000, 5000, 10000],
    registers: [this.registry],
  });

  constructor(opts: { processMetrics?: boolean } = {}) {
    for (const stage of ['kernel', 'user_queue', 'spool'] as const) this.dropped.inc({ stage }, 0);
    if (opts.processMetrics)
      collectDefaultMetrics({ register: this.registry, prefix: 'tcpaudit_producer_' });
  }
}

/** Serves GET /metrics on host:port; resolves with the port (0 picks a free one). */
export function serveMetrics(
  registry: Registry,
  host: string,
  port: number,
): Promise<http.Server & { port: number }> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404).end('not found: try /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(`${err.message}\n`),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(Object.assign(server, { port: (server.address() as { port: number }).port }));
    });
  });
}
