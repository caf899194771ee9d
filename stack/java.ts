import path from 'node:path';

/** The JVM for Kafka and the registry: JAVA_HOME's if set (as Java tooling does), else PATH's. */
export function javaBin(): string {
  const home = process.env.JAVA_HOME;
  return home ? path.join(home, 'bin', 'java') : 'java';
}
