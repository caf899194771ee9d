import type avro from 'avsc';
import { COMPATIBILITY, SchemaType, type SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { loadValueSchema, setCompatibility, type RegistryCallOptions } from '../common/registry';
import { gapsTopic } from '../common/config';

export const GAP_SCHEMA_FILE = 'capture-gap.avsc';

/**
 * Registers schemas/capture-gap.avsc under `<topic>.gaps-value` (TopicNameStrategy for the
 * gaps topic), with BACKWARD compatibility set on the subject first, as for the events.
 */
export async function registerGapSchema(
  registry: SchemaRegistry,
  registryUrl: string,
  topic: string,
  opts: RegistryCallOptions = {},
): Promise<{ id: number; type: avro.Type }> {
  const { text, type } = loadValueSchema(GAP_SCHEMA_FILE);
  const subject = `${gapsTopic(topic)}-value`;
  await setCompatibility(registryUrl, subject, COMPATIBILITY.BACKWARD, opts);
  const { id } = await registry.register(
    { type: SchemaType.AVRO, schema: text },
    { subject, compatibility: COMPATIBILITY.BACKWARD },
  );
  return { id, type };
}
