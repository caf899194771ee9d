import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import avro from 'avsc';
import { COMPATIBILITY } from '@kafkajs/confluent-schema-registry';
import { loadValueSchema, setCompatibility } from '../common/registry';
import { endpoints, uniqueName } from './harness';

// Schema evolution of tcp-state-change.avsc under BACKWARD compatibility, on the real
// registry: a new optional field is accepted and both directions of reading work; a new
// field without a default is refused with 409.

let url: string;
const subjects: string[] = [];

before(
  async () => {
    url = (await endpoints()).env.SCHEMA_REGISTRY_URL.replace(/\/+$/, '');
  },
  { timeout: 180_000 },
);

after(async () => {
  for (const s of subjects) {
    await rest('DELETE', `/subjects/${s}`).catch(() => undefined);
    await rest('DELETE', `/subjects/${s}?permanent=true`).catch(() => undefined);
  }
});

async function rest(method: string, path: string, body?: unknown) {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { 'Content-Type': 'application/vnd.schemaregistry.v1+json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : {} };
}

const v1Schema = JSON.parse(loadValueSchema().text);
const withField = (field: Record<string, unknown>) => ({
  ...v1Schema,
  fields: [...v1Schema.fields, field],
});
const v2Schema = withField({
  name: 'container_id',
  type: ['null', 'string'],
  default: null,
  doc: 'test-only field: what a v2 might add',
});

const v1Record = {
  conn_id: 'abc-1-2',
  seq: 7,
  host: 'h1',
  boot_id: 'b',
  time: 1_764_000_000_000_000,
  family: 'INET',
  local_addr: '10.0.0.1',
  local_port: 40000,
  remote_addr: '10.0.0.2',
  remote_port: 443,
  old_state: 'SYN_SENT',
  new_state: 'ESTABLISHED',
  pid: 1,
  tid: 1,
  comm: 'curl',
  uid: 0,
  netns: 1,
  cgroup_id: 1,
  bytes_sent: 0,
  bytes_received: 0,
  segs_out: 1,
  segs_in: 1,
  retransmits: 0,
  srtt_us: 10,
  ...Object.fromEntries(
    v1Schema.fields
      .filter((f: { default?: unknown }) => 'default' in f)
      .map((f: { name: string; default: unknown }) => [f.name, f.default]),
  ),
};

test('BACKWARD: v2 with an optional field is accepted, and v1 and v2 read each other', async () => {
  const subject = `${uniqueName('tcpaudit.schema')}-value`;
  subjects.push(subject);
  await setCompatibility(url, subject, COMPATIBILITY.BACKWARD);
  const first = await rest('POST', `/subjects/${subject}/versions`, {
    schema: JSON.stringify(v1Schema),
  });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  const check = await rest('POST', `/compatibility/subjects/${subject}/versions/latest`, {
    schema: JSON.stringify(v2Schema),
  });
  assert.equal(check.status, 200);
  assert.equal(check.body.is_compatible, true);
  const second = await rest('POST', `/subjects/${subject}/versions`, {
    schema: JSON.stringify(v2Schema),
  });
  assert.equal(second.status, 200, JSON.stringify(second.body));
  assert.notEqual(second.body.id, first.body.id);

  const v1 = avro.Type.forSchema(v1Schema);
  const v2 = avro.Type.forSchema(v2Schema);
  // Old data, new reader: the new field takes its default.
  const oldBytes = v1.toBuffer(v1Record);
  const readByV2 = v2.fromBuffer(oldBytes, v2.createResolver(v1)) as Record<string, unknown>;
  assert.deepEqual({ ...readByV2 }, { ...v1Record, container_id: null });
  // New data, old reader: the new field is skipped.
  const newBytes = v2.toBuffer({ ...v1Record, container_id: 'c0ffee' });
  const readByV1 = v1.fromBuffer(newBytes, v1.createResolver(v2)) as Record<string, unknown>;
  assert.deepEqual({ ...readByV1 }, v1Record);
});

test('BACKWARD: a new field without a default is refused with 409', async () => {
  const subject = `${uniqueName('tcpaudit.schema')}-value`;
  subjects.push(subject);
  await setCompatibility(url, subject, COMPATIBILITY.BACKWARD);
  assert.equal(
    (await rest('POST', `/subjects/${subject}/versions`, { schema: JSON.stringify(v1Schema) }))
      .status,
    200,
  );
  const bad = withField({ name: 'container_id', type: 'string' });
  const refused = await rest('POST', `/subjects/${subject}/versions`, {
    schema: JSON.stringify(bad),
  });
  assert.equal(refused.status, 409, JSON.stringify(refused.body));
  const versions = await rest('GET', `/subjects/${subject}/versions`);
  assert.deepEqual(versions.body, [1], 'nothing was registered');
});
