import type { Pool } from 'pg';

/**
 * The expiry rule. Being quiet proves nothing: a healthy connection emits state changes only when
 * it opens and closes, so an idle limit alone would expire every long-lived connection. An open
 * connection is marked 'expired' (closed_at stays NULL: its end is unknown) only when this id can
 * never receive another event:
 *
 * - reboot: its host has since sent events under another boot id, first stamped after this
 *   connection's last event. A reboot ends every socket, so this is certain.
 * - continued: a capture reload (new run id, same boot) does NOT end sockets; the new run only
 *   loses their ids, and a surviving socket shows up under a new id at its next state change,
 *   first seen in a mid-life state. When such a connection of a newer run appears with the same
 *   host, boot, netns and four-tuple, opened after this one's last event, this one is expired and
 *   its story continues there. A quiet survivor of a reload stays 'open' until then: correct, as
 *   far as anyone can tell.
 * - host-silent: the whole host (all its runs) sent nothing for the idle limit, by event time and
 *   by processing time, and this connection had no event for the idle limit either. The host or
 *   its producer is gone; if it comes back and the connection moves again, the next event
 *   reopens the row (the handler recomputes the outcome from the path).
 */
export async function expireConnections(
  pool: Pool,
  idleLimitSeconds: number,
): Promise<Record<string, number>> {
  const limit = `${Math.max(1, Math.floor(idleLimitSeconds))} seconds`;
  const counts: Record<string, number> = {};
  const run = async (reason: string, sql: string, params: unknown[] = []) => {
    const r = await pool.query(sql, params);
    counts[reason] = r.rowCount ?? 0;
  };
  await run(
    'reboot',
    `UPDATE connections c
      SET outcome = 'expired', expired_at = now(), expire_reason = 'reboot', updated_at = now()
     WHERE c.outcome = 'open' AND EXISTS (
       SELECT 1 FROM host_runs h WHERE h.host = c.host AND h.boot_id <> c.boot_id
          AND h.first_event_at > c.last_event_at)`,
  );
  await run(
    'continued',
    `UPDATE connections c
      SET outcome = 'expired', expired_at = now(), expire_reason = 'continued', updated_at = now()
     WHERE c.outcome = 'open' AND EXISTS (
       SELECT 1 FROM connections n WHERE n.host = c.host AND n.boot_id = c.boot_id
          AND n.run_id <> c.run_id AND n.netns = c.netns AND n.local_addr = c.local_addr
          AND n.local_port = c.local_port AND n.remote_addr = c.remote_addr
          AND n.remote_port = c.remote_port AND n.opened_at > c.last_event_at
          AND n.states[1] NOT IN ('CLOSED', 'LISTEN', 'NEW-SYN-RECEIVED'))`,
  );
  await run(
    'host-silent',
    `UPDATE connections c
      SET outcome = 'expired', expired_at = now(), expire_reason = 'host-silent', updated_at = now()
     WHERE c.outcome = 'open' AND c.last_event_at < now() - $1::interval
       AND c.host IN (SELECT host FROM host_runs GROUP BY host
                       HAVING max(last_event_at) < now() - $1::interval
                          AND max(last_seen_at) < now() - $1::interval)`,
    [limit],
  );
  return counts;
}
