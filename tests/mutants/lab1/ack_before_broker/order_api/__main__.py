from services.order_api.app import OrderApi
from services.common.orders.api import serve_api


class AckBeforeBroker(OrderApi):
    def publish(self, event):
        self.publisher.send_nowait(event)  # BUG: 201 goes out while the event is only in a local buffer


serve_api(AckBeforeBroker)
