/**
 * Structured logs: one JSON object per line on stderr, so stdout stays free for data
 * (`tcpaudit capture` prints events there) and an operator can pipe logs into jq or a collector.
 */

export type Level = 'debug' | 'info' | 'warn' | 'error';

const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

export function parseLevel(text: string | undefined): Level {
  const level = (text ?? 'info').toLowerCase();
  if (level in RANK) return level as Level;
  throw new Error(`unknown log level "${text}": use debug, info, warn or error`);
}

function plain(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) return { message: value.message, name: value.name };
  return value;
}

export function createLogger(
  component: string,
  level: Level = parseLevel(process.env.TCPAUDIT_LOG_LEVEL),
  base: Record<string, unknown> = {},
  write: (line: string) => void = (line) => process.stderr.write(line),
): Logger {
  const min = RANK[level];
  const emit = (lvl: Level, msg: string, fields?: Record<string, unknown>) => {
    if (RANK[lvl] < min) return;
    const record = {
      time: new Date().toISOString(),
      level: lvl,
      component,
      msg,
      ...base,
      ...fields,
    };
    write(JSON.stringify(record, (_k, v) => plain(v)) + '\n');
  };
  return {
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
    child: (fields) => createLogger(component, level, { ...base, ...fields }, write),
  };
}
