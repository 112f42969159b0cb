"""Time pytorch-forecasting's standard predict path against the engine's fast path.

For fleets of 20, 200 and 1,000 servers with full 288-step windows and all eight targets, on
the same bundle and data, prints milliseconds for (a) ``TimeSeriesDataSet.from_parameters(...,
predict=True)`` + ``model.predict`` and (b) ``Engine.forecast``, the ratio a/b and the largest
difference between their quantiles, in metric units and in units of each window's standard
deviation (the scale the network forecasts in). Without ``--bundle`` it uses an untrained network of the
``reference`` preset's size (timings and equality do not depend on the weights).

    .venv/bin/python benchmarks/inference.py [--bundle models/fleet] [--sizes 20 200 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from workbench.features import to_model_frame
from workbench.inference.engine import Engine
from workbench.inference.reference import reference_forecast, scaled_difference
from workbench.model import Bundle, TrainConfig, load_bundle
from workbench.model.dataset import DatasetSpec
from workbench.model.network import network_from_dataset, network_hparams
from workbench.simulator import generate


def untrained_bundle(seed: int = 0) -> Bundle:
    config = TrainConfig.preset("reference")
    torch.manual_seed(seed)
    frame = generate(8, 2.0, seed=seed)
    model_frame = to_model_frame(frame, config.targets)
    spec = DatasetSpec.fit(model_frame, config)
    network = network_from_dataset(spec.build(model_frame), config, spec).eval()
    return Bundle(network, spec, config, network_hparams(network))


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle folder (default: an untrained reference-size network)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200, 1000])
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing; the best is shown")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    bundle = load_bundle(args.bundle) if args.bundle else untrained_bundle()
    device = next(bundle.network.parameters()).device
    params = sum(p.numel() for p in bundle.network.parameters())
    print(f"device {device}, torch threads {torch.get_num_threads()}, network parameters {params:,}")
    header = ("servers", "(a) predict ms", "(b) engine ms", "a/b", "max abs diff", "max diff/σ")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (8, 15, 14, 7, 13, 11), strict=True)))
    for n in args.sizes:
        frame = generate(n, 1.0 + 1 / 288, seed=n)  # 289 steps: a full 288-step window per server
        engine = Engine(bundle)
        engine.ingest(frame)
        a_s, ref = best_of(args.repeat, lambda f=frame: reference_forecast(bundle, f))
        b_s, fast = best_of(args.repeat, engine.forecast)
        assert ref.servers == fast.servers and len(fast.servers) == n
        diff = np.abs(ref.quantiles - fast.quantiles).max()
        scaled = scaled_difference(fast, ref, frame, bundle.spec.max_encoder_length).max()
        print(f"{n:>8} {a_s * 1e3:>15.1f} {b_s * 1e3:>14.1f} {a_s / b_s:>7.1f} {diff:>13.2e} {scaled:>11.2e}")


if __name__ == "__main__":
    main()
