"""FedAvg over ResNet-18's tensors (names, shapes and dtypes from medfed, in shapes-path), with each round
timed from the moment the strategy configures it to the moment it has aggregated the replies: the span
medfed's history.jsonl records as a round's duration. Timings go to timings-path, one JSON line a round."""

import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class TimedFedAvg(FedAvg):
    def __init__(self, timings_path: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._path, self._started = timings_path, 0.0

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self._started = time.monotonic()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        replies = list(replies)
        result = super().aggregate_train(server_round, replies)
        with open(self._path, "a") as out:
            line = {"round": server_round, "duration_s": time.monotonic() - self._started, "replies": len(replies)}
            out.write(json.dumps(line) + "\n")
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    with open(str(config["shapes-path"])) as f:
        shapes = json.load(f)
    arrays = ArrayRecord([np.zeros(shape, dtype=dtype) for shape, dtype in shapes])
    nodes = int(config["num-nodes"])
    strategy = TimedFedAvg(
        str(config["timings-path"]),
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
    )
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=int(config["num-server-rounds"]))
