"""The reference relay, except that it confirms the slot position BEFORE it sends the records."""
from services.cdc_relay.relay import Relay, main
from services.cdc_relay import relay


class AdvanceBeforeAck(Relay):
    def publish(self, txns):
        if txns:
            # BUG: the slot moves past these transactions before Kafka acknowledged their records.
            # A crash (or a broker that refuses them) now and they are never streamed again: lost.
            Relay.confirm(self, txns[-1].end_lsn)
        super().publish(txns)

    def confirm(self, lsn):
        """The round's confirmation after the acks: already done above, before the sends."""


relay.Relay = AdvanceBeforeAck  # main() builds relay.Relay
main()
