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

// Scratch space for ipv6Text: the decoder's hot path allocates no arrays per address.
const groups = new Uint16Array(8);

/** RFC 5952: lower case, no leading zeros, the longest run (>= 2) of zero groups as "::". */
export function ipv6Text(buf: Buffer, at: number): string {
  if (isV4Mapped(buf, at)) return `::ffff:${ipv4Text(buf, at + 12)}`;

  for (let i = 0; i < 8; i++) groups[i] = (buf[at + i * 2] << 8) | buf[at + i * 2 + 1];

  // Leftmost longest run of zero groups; a single zero group stays "0" per RFC 5952 4.2.2.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
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

  let out = '';
  for (let i = 0; i < 8; i++) {
    if (i === bestStart) {
      out += i === 0 ? '::' : ':';
      i += bestLen - 1;
      continue;
    }
    out += groups[i].toString(16);
    if (i < 7) out += ':';
  }
  return out;
}

/** A parsed CIDR for the in-kernel address filter (struct tcpaudit_cidr). */
export interface Cidr {
  family: 2 | 10;
  /** 16 bytes, network order; IPv4 in the first 4. Host bits are cleared. */
  addr: Buffer;
  prefix: number;
}

function parseIpv4(text: string): number[] | null {
  const parts = text.split('.');
  if (parts.length !== 4) return null;
  const bytes = parts.map((p) => (/^\d{1,3}$/.test(p) ? Number(p) : NaN));
  return bytes.every((b) => b >= 0 && b <= 255) ? bytes : null;
}

function parseIpv6(text: string): number[] | null {
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const groups = (half: string): number[] | null => {
    if (half === '') return [];
    const out: number[] = [];
    const parts = half.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i];
      if (i === parts.length - 1 && p.includes('.')) {
        const v4 = parseIpv4(p);
        if (!v4) return null;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(p)) {
        out.push(parseInt(p, 16));
      } else {
        return null;
      }
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (!head || !tail) return null;
  const fill = 8 - head.length - tail.length;
  if (halves.length === 2 ? fill < 1 : fill !== 0) return null;
  const all = [...head, ...new Array(fill).fill(0), ...tail];
  return all.flatMap((g) => [g >> 8, g & 0xff]);
}

/** Parses "10.0.0.0/8", "2001:db8::/32" or a bare address (a /32 or /128). */
export function parseCidr(text: string): Cidr {
  const [addrText, prefixText, extra] = text.split('/');
  const v4 = parseIpv4(addrText);
  const bytes = v4 ?? parseIpv6(addrText);
  if (!bytes || extra !== undefined) {
    throw new RangeError(`"${text}" is not an IPv4 or IPv6 address or CIDR`);
  }
  const max = v4 ? 32 : 128;
  const prefix = prefixText === undefined ? max : Number(prefixText);
  if (!/^\d{1,3}$/.test(prefixText ?? String(max)) || prefix > max) {
    throw new RangeError(`"${text}": prefix length must be 0..${max}`);
  }
  const addr = Buffer.alloc(16);
  Buffer.from(bytes).copy(addr);
  for (let bit = prefix; bit < max; bit++) addr[bit >> 3] &= ~(0x80 >> (bit & 7));
  return { family: v4 ? 2 : 10, addr, prefix };
}
