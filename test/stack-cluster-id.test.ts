import assert from 'node:assert/strict';
import { test } from 'node:test';
import { newClusterId } from '../stack/kafka';

test('KRaft cluster ids: 16 bytes in base64url, never read as an option by StorageTool', () => {
  // One plain base64url id in 64 starts with '-'; 10,000 draws would meet one for certain.
  for (let i = 0; i < 10_000; i++) {
    const id = newClusterId();
    assert.match(id, /^[A-Za-z0-9_][A-Za-z0-9_-]{21}$/);
    assert.equal(Buffer.from(id, 'base64url').length, 16);
  }
});
