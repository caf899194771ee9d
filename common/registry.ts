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

export function createRegistry(url: string): SchemaRegistry {
  // The client retries transient failures itself; a short budget keeps start-up errors prompt.
  return new SchemaRegistry({ host: url, retry: { retries: 3, initialRetryTimeInSecs: 0.2 } });
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
): Promise<RegisteredValueSchema> {
  const { text, type } = loadValueSchema();
  await setCompatibility(registryUrl, valueSubject(topic), COMPATIBILITY.BACKWARD);
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
export async function setCompatibility(registryUrl: string, subject: string, level: string) {
  const url = `${registryUrl}/config/${encodeURIComponent(subject)}`;
  const response = await fetch(url, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/vnd.schemaregistry.v1+json' },
    body: JSON.stringify({ compatibility: level }),
  });
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
