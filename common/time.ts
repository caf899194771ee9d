/** ISO-8601 text with all six fractional digits, so PostgreSQL keeps the microseconds. */
export function isoFromMicros(us: number): string {
  const ms = Math.floor(us / 1000);
  const rest = us - ms * 1000;
  const iso = new Date(ms).toISOString();
  return `${iso.slice(0, -1)}${String(rest).padStart(3, '0')}Z`;
}
