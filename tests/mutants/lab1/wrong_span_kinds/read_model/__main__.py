from rpc_kinds import RpcKinds
from services.common.orders.consumer import run_consumer
from services.read_model.consumer import ReadModel


class RpcReadModel(ReadModel):
    def __init__(self) -> None:
        super().__init__()
        self.tracer = RpcKinds(self.tracer)  # BUG: the processing span is a SERVER span


run_consumer(RpcReadModel)
