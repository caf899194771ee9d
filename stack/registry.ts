import fs from 'node:fs';
import path from 'node:path';
import { HOST, PORTS } from './endpoints';
import { registryHealthy } from './health';
import { javaBin } from './java';
import { registryAppDir, servicePaths } from './paths';
import { needSetup, type Service } from './service';

/**
 * Apicurio Registry (a Quarkus app; version pinned in stack/registry/pom.xml), which serves a
 * Confluent-compatible API at /apis/ccompat/v7. Confluent's own registry is not on Maven Central.
 */

const paths = servicePaths('registry');

function runnerJar(): string {
  const dir = registryAppDir();
  const files = fs.existsSync(dir) ? fs.readdirSync(dir) : [];
  const jar = files.find((f) => f.endsWith('-runner.jar'));
  if (!jar) throw needSetup(`Apicurio Registry runner jar in ${dir}`);
  return path.join(dir, jar);
}

export const registry: Service = {
  name: 'registry',
  port: PORTS.registry,
  ports: [PORTS.registry],
  paths,
  marker: paths.dataDir,
  stopSignal: 'SIGTERM',
  startTimeoutMs: 90_000,
  async prepare() {
    runnerJar();
    fs.mkdirSync(paths.dataDir, { recursive: true });
  },
  launch() {
    return {
      command: javaBin(),
      args: [
        '-Xms128m',
        '-Xmx512m',
        `-Dquarkus.http.host=${HOST}`,
        `-Dquarkus.http.port=${PORTS.registry}`,
        // The default store is an in-memory H2 database: schema ids would restart at 1 after
        // every restart while Kafka still holds records framed with the old ids. An H2 file
        // keeps ids stable across `stack down`/`stack up`, like the other services' data.
        `-Dapicurio.datasource.url=jdbc:h2:file:${path.join(paths.dataDir, 'registry')}`,
        '-jar',
        runnerJar(),
      ],
      cwd: paths.dataDir,
      logFile: paths.logFile,
    };
  },
  probe: registryHealthy,
};
