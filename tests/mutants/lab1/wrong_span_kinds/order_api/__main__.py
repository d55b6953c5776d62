import services.common.orders.publisher as publisher
from rpc_kinds import RpcKinds
from services.order_api.app import main

publisher.tracer = RpcKinds(publisher.tracer)  # BUG: the send span is a CLIENT span

main()
