"""No change-event invalidation: the catalog invalidates in its requests (before the commit)."""
from services.common.lifecycle import install_signal_handlers

stopping = install_signal_handlers()
stopping.wait()
