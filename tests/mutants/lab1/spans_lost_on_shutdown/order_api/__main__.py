from no_flush import install
from services.order_api.app import main

install("order_api")
main()
