import psycopg

from services.common import db
from services.common.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class DeadLetterEverything(ReadModel):
    def handle(self, msg):
        try:
            if self.conn.closed:
                self.conn = db.connect()
            self.apply_record(msg)
        except psycopg.Error as e:  # BUG: a transient error is treated like a malformed record
            self.conn.close()
            self.dead_letter(msg, f"database error: {e}")
        self.commit_offset(msg)


run_consumer(DeadLetterEverything)
