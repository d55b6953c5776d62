"""Hostile: take the port, never answer health, ignore SIGTERM - the grader must not wait forever."""
import os
import signal
import socket
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(os.environ["PORT"])))
server.listen(100)  # connections are accepted by the kernel, then nothing is ever read or written
while True:
    time.sleep(1)
