"""The reference catalog, except that a cached 404 lives as long as a product."""
from services.catalog import app
from services.catalog.app import Catalog, main

app.NEGATIVE_TTL_MS = app.TTL_MS  # BUG: "not found" is remembered for 30 s


main(Catalog)
