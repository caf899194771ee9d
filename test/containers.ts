import type { Endpoints } from './harness';

/**
 * The test stack in containers, for machines with a Docker engine. Host ports are fixed (the
 * local stack's own) because Kafka must advertise an address clients can reach, known before
 * the container starts. Not exercised where no engine runs; the native stack serves there.
 */
export async function containerEndpoints(): Promise<Endpoints> {
  const { GenericContainer, Wait } = await import('testcontainers');
  const kafkaPort = 19092;
  const postgres = await new GenericContainer('postgres:15')
    .withEnvironment({
      POSTGRES_USER: 'tcpaudit',
      POSTGRES_PASSWORD: 'tcpaudit',
      POSTGRES_DB: 'tcpaudit',
    })
    .withExposedPorts(5432)
    .withWaitStrategy(Wait.forLogMessage(/ready to accept connections/, 2))
    .start();
  const kafka = await new GenericContainer('apache/kafka:3.9.2')
    .withEnvironment({
      KAFKA_NODE_ID: '1',
      KAFKA_PROCESS_ROLES: 'broker,controller',
      KAFKA_LISTENERS: 'PLAINTEXT://:9092,CONTROLLER://:9093',
      KAFKA_ADVERTISED_LISTENERS: `PLAINTEXT://127.0.0.1:${kafkaPort}`,
      KAFKA_CONTROLLER_LISTENER_NAMES: 'CONTROLLER',
      KAFKA_LISTENER_SECURITY_PROTOCOL_MAP: 'CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT',
      KAFKA_CONTROLLER_QUORUM_VOTERS: '1@localhost:9093',
      KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: '1',
      KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR: '1',
      KAFKA_TRANSACTION_STATE_LOG_MIN_ISR: '1',
    })
    .withExposedPorts({ container: 9092, host: kafkaPort })
    .withWaitStrategy(Wait.forLogMessage(/Kafka Server started/))
    .start();
  const registry = await new GenericContainer('apicurio/apicurio-registry:3.0.9')
    .withExposedPorts(8080)
    .withWaitStrategy(Wait.forHttp('/apis/ccompat/v7/subjects', 8080))
    .start();
  const registryPort = registry.getMappedPort(8080);
  return {
    source: 'testcontainers',
    env: {
      PGHOST: postgres.getHost(),
      PGPORT: String(postgres.getMappedPort(5432)),
      PGUSER: 'tcpaudit',
      PGPASSWORD: 'tcpaudit',
      PGDATABASE: 'tcpaudit',
      KAFKA_BROKERS: `127.0.0.1:${kafkaPort}`,
      SCHEMA_REGISTRY_URL: `http://${registry.getHost()}:${registryPort}/apis/ccompat/v7`,
    },
    stop: async () => {
      await Promise.all([postgres.stop(), kafka.stop(), registry.stop()]);
    },
  };
}
