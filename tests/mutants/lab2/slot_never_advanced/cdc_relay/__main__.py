"""The reference relay, except that it keeps its position in memory and never confirms it to the
server: the replication slot stays where it was created."""
from services.cdc_relay import relay
from services.cdc_relay.relay import Relay, main


class NeverAdvances(Relay):
    position = 0  # end LSN of the last acknowledged transaction, in this process only

    def confirm(self, lsn):
        # BUG: the position is never sent to the server (no send_feedback, no
        # pg_replication_slot_advance): the slot's confirmed_flush_lsn stays behind and PostgreSQL
        # keeps every byte of WAL since. Each reconnect or restart re-sends everything from there.
        self.position = lsn


relay.Relay = NeverAdvances
main()
