from services.order_api.app import OrderApi
from services.common.orders.api import serve_api


class CancelFireAndForget(OrderApi):
    def publish(self, event):
        if event["type"] == "OrderCancelled":
            # BUG: on the cancel path only, 200 goes out while the event is only in a local buffer
            self.publisher.send_nowait(event)
        else:
            super().publish(event)


serve_api(CancelFireAndForget)
