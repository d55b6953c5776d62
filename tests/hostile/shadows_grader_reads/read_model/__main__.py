"""A read model that does nothing harmful: this submission's attack is in order_api."""
import time

from services.common.config import env

env("DATABASE_URL")
while True:
    time.sleep(1)
