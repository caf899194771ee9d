import path from 'node:path';

/**
 * The repository (or install) root: where schemas/, native/ and bpf/ live. Compiled files sit
 * in dist/<folder>/, so the root is two levels above this file unless TCPAUDIT_HOME says so.
 */
export function repoRoot(): string {
  return process.env.TCPAUDIT_HOME ?? path.resolve(__dirname, '..', '..');
}

export function schemaPath(name: string): string {
  return path.join(repoRoot(), 'schemas', name);
}
