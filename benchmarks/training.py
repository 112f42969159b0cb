"""Time pytorch-forecasting's ``TimeSeriesDataSet`` training path against the workbench's window batches.

On one simulated fleet and one network (a preset, untrained: timings do not depend on the
weights), with the same batch size, prints windows per second for

* data only: (a) ``TimeSeriesDataSet`` + its ``DataLoader`` (every sample built in Python,
  ``randomize_length`` on, as training used it) and (b) :class:`workbench.model.loaders.TrainingData`'s
  loader (batches gathered from contiguous arrays);
* end to end, a whole training step (batch, forward, loss, backward, Adam step): (a) the
  dataset's batches into the stock network, as training ran before, and (b) the window batches
  into the network with :mod:`workbench.model.training_speedups` applied, as ``workbench train``
  runs now; plus the share of (b)'s step spent gathering the batch.

    .venv/bin/python benchmarks/training.py [--preset reference] [--servers 24] [--days 7] [--batches 12]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from workbench.features import TIME_IDX, to_model_frame
from workbench.model import TrainConfig
from workbench.model.dataset import DatasetSpec
from workbench.model.loaders import TrainingData
from workbench.model.train import split_point, untrained_network
from workbench.model.training_speedups import sped_up
from workbench.simulator import generate


def timed_batches(
    batches: Iterator[Any], count: int, warmup: int, step: Callable[[Any], None] | None
) -> tuple[float, float]:
    """Return (seconds per batch in total, seconds per batch spent fetching) over ``count`` batches after ``warmup``."""
    fetch = total = 0.0
    for i in range(warmup + count):
        started = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        if step is not None:
            step(batch)
        if i >= warmup:
            fetch += fetched - started
            total += time.perf_counter() - started
    return total / count, fetch / count


def training_step(network: Any) -> Callable[[Any], None]:
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    network.train()

    def step(batch: Any) -> None:
        x, y = batch
        loss = network.loss(network(x)["prediction"], y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="reference", help="network and batch size (a TrainConfig preset)")
    parser.add_argument("--servers", type=int, default=24)
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--batches", type=int, default=12, help="batches timed per figure (after 2 warm-up ones)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    config = TrainConfig.preset(args.preset)
    frame = generate(args.servers, args.days, seed=0)
    model_frame = to_model_frame(frame, config.targets)
    cutoff = split_point(model_frame, config)
    spec = DatasetSpec.fit(model_frame[model_frame[TIME_IDX] <= cutoff], config)
    torch.manual_seed(0)
    network = untrained_network(spec, model_frame, config)
    started = time.perf_counter()
    dataset = spec.build(model_frame[model_frame[TIME_IDX] <= cutoff], train=True)
    a_setup = time.perf_counter() - started
    started = time.perf_counter()
    data = TrainingData.build(model_frame, spec, network.hparams, config, cutoff)
    b_setup = time.perf_counter() - started
    bs = config.batch_size
    print(
        f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}; preset {args.preset}: hidden "
        f"{config.hidden_size}, heads {config.attention_head_size}, LSTM layers {config.lstm_layers}, encoder "
        f"{config.max_encoder_length} steps, batch {bs}; {args.servers} servers x {args.days:g} days"
    )
    print(f"set-up: (a) TimeSeriesDataSet {a_setup:.1f} s, (b) window index {b_setup:.2f} s")

    def loader_a() -> Iterator[Any]:
        return iter(dataset.to_dataloader(train=True, batch_size=bs, num_workers=0))

    def loader_b() -> Iterator[Any]:
        return iter(data.train_loader)

    n, w = args.batches, 2
    a_data, _ = timed_batches(loader_a(), n, w, None)
    b_data, _ = timed_batches(loader_b(), n, w, None)
    a_step, _ = timed_batches(loader_a(), n, w, training_step(network))
    with sped_up(network):
        b_step, b_fetch = timed_batches(loader_b(), n, w, training_step(network))
    rows = [
        ("data only", a_data, b_data),
        ("end to end (forward, backward, step)", a_step, b_step),
    ]
    print(f"{'':38} {'(a) windows/s':>14} {'(b) windows/s':>14} {'b/a':>7}")
    for name, a, b in rows:
        print(f"{name:38} {bs / a:>14.0f} {bs / b:>14.0f} {a / b:>7.1f}")
    print(
        f"(b) per step: {b_step * 1e3:.0f} ms, of which {b_fetch * 1e3:.1f} ms gathering the batch "
        f"({100 * b_fetch / b_step:.1f} %); (a) per step {a_step * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
