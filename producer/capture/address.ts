/** Text forms of the 16-byte address fields: dotted quad, RFC 5952 IPv6, v4-mapped IPv6. */

export function ipv4Text(buf: Buffer, at: number): string {
  return `${buf[at]}.${buf[at + 1]}.${buf[at + 2]}.${buf[at + 3]}`;
}

function isV4Mapped(buf: Buffer, at: number): boolean {
  for (let i = 0; i < 10; i++) {
    if (buf[at + i] !== 0) return false;
  }
  return buf[at + 10] === 0xff && buf[at + 11] === 0xff;
}

/** RFC 5952: lower case, no leading zeros, the longest run (>= 2) of zero groups as "::". */
export function ipv6Text(buf: Buffer, at: number): string {
  if (isV4Mapped(buf, at)) return `::ffff:${ipv4Text(buf, at + 12)}`;

  const groups: number[] = new Array(8);
  for (let i = 0; i < 8; i++) groups[i] = buf.readUInt16BE(at + i * 2);

  // Leftmost longest run of zero groups; a single zero group stays "0" per RFC 5952 4.2.2.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }

  const hex = (from: number, to: number) =>
    groups.slice(from, to).map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLen, 8)}`;
}
