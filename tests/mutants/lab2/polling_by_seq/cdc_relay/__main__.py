"""The reference relay (sends, traces, waits for every ack, moves on only over acknowledged
records), except that it POLLS the outbox table by its seq column instead of reading the log."""
from datetime import datetime, timezone

from services.cdc_relay import relay
from services.cdc_relay.relay import Relay, Transaction, main
from services.common.lifecycle import stopping

POSITION = "CREATE TABLE IF NOT EXISTS relay_position (id int PRIMARY KEY, last_seq bigint NOT NULL)"
COLUMNS = ("seq", "id", "aggregatetype", "aggregateid", "type", "payload", "traceparent")


class PollingRelay(Relay):
    def __init__(self):
        super().__init__()
        self.conn.execute(POSITION)
        row = self.conn.execute("SELECT last_seq FROM relay_position WHERE id = 1").fetchone()
        self.last_seq = row[0] if row else 0

    def open_stream(self):
        self.stream = "polling"  # no replication connection

    def close_stream(self):
        self.stream = None

    def read(self, wait):
        # BUG: seq is taken at INSERT, a row becomes visible at COMMIT. A transaction that commits
        # after a later seq was read (and last_seq moved past it) is never read: its row is lost.
        rows = self.conn.execute(
            """SELECT seq, id::text, aggregatetype, aggregateid, type, payload::text, traceparent
               FROM outbox WHERE seq > %s ORDER BY seq LIMIT %s""", (self.last_seq, self.batch_rows)).fetchall()
        if not rows:
            stopping.wait(min(wait, 0.05))
            return []
        return [Transaction(datetime.now(timezone.utc), end_lsn=rows[-1][0],
                            rows=[dict(zip(COLUMNS, r)) for r in rows])]

    def confirm(self, seq):
        """Called only once every record up to `seq` was acknowledged (the reference's rule)."""
        self.last_seq = seq
        self.conn.execute("""INSERT INTO relay_position VALUES (1, %s)
                             ON CONFLICT (id) DO UPDATE SET last_seq = EXCLUDED.last_seq""", (seq,))

    def heartbeat(self):
        """No slot to keep moving: a polling relay does not read the log."""


relay.Relay = PollingRelay
main()
