"""Benchmark ``dpbeam train``'s input pipeline: is it ever the bottleneck?

    .venv/bin/python bench/bench_train.py [--model efficientnet] [--steps 30]

Prepares and exports the bundled BBBC022 example (808 real cells, 128x128x5), then times the
same compiled training step of the same model for ``--steps`` global batches of 32:

- streaming: batches come from the shards through the training ``tf.data`` pipeline
  (interleave, parse, balance, shuffle, augment, batch, prefetch);
- cached: the same batches, read once beforehand and served from memory.

The ratio streaming / cached should be >= 0.9: the input pipeline keeps the model busy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench_train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here (bench_all.py)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import tensorflow as tf

    from beam_pipelines.cli import main as dpbeam
    from dpcore.config import parse_config
    from dpcore.layout import ProjectLayout
    from dpcore.storage import StoragePath
    from dpcore.trainer import DataSettings, Trainer
    from dpcore.training import TrainingPlan
    from dpcore.training_data import ExportInfo, training_dataset

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(REPO / "tests/data/bbbc022", root)
        quiet = lambda line: None  # noqa: E731
        for command in ("prepare", "export-sc"):
            assert dpbeam(["--root", str(root), "--config", "bbbc022.json", "--log-level", "WARNING", command],
                          emit=quiet) == 0
        data = json.loads((root / "inputs/config/bbbc022.json").read_text())
        data["train"]["model"].update({"name": args.model, "augmentations": True})
        config = parse_config(data)
        info = ExportInfo.read(StoragePath(str(root / "outputs/single-cells")))
        plan = TrainingPlan.from_config(config, info.num_classes, (128, 128, 5), None)
        settings = DataSettings(cache_size=config.train.sampling.cache_size, workers=os.cpu_count() or 1,
                                factor=1.0, augmentations=True, validation_frame="val", validation_batch_size=32,
                                sample_first_crops=False, seed=0)
        trainer = Trainer(plan, info, settings, ProjectLayout.create(root), info.labels)

        def stream():
            return training_dataset(info, 32, settings.cache_size, settings.workers, 1.0, True, 0)

        def run(dataset) -> float:
            iterator = iter(trainer.strategy.experimental_distribute_dataset(dataset))
            trainer._train_step(next(iterator))  # compile, warm the pipeline
            start = time.perf_counter()
            for _ in range(args.steps):
                result = trainer._train_step(next(iterator))
            float(result["loss"])
            return args.steps / (time.perf_counter() - start)

        full = stream().filter(lambda images, onehot, labels: tf.shape(images)[0] == 32)
        cached_batches = list(full.take(args.steps + 1))
        cached = tf.data.Dataset.from_tensor_slices(tuple(tf.stack(part) for part in zip(*cached_batches)))
        cached_rate = run(cached.cache().repeat())
        streaming_rate = run(stream())

    print(f"\ntrain benchmark: {args.model}, 128x128x5, global batch 32, {args.steps} steps, "
          f"{os.cpu_count()} cores (CPU)")
    print(f"{'input':<48} {'steps/s':>8}")
    print(f"{'cached in memory (the model alone)':<48} {cached_rate:>8.2f}")
    print(f"{'streaming from the TFRecord shards':<48} {streaming_rate:>8.2f}")
    print(f"\nstreaming / cached = {streaming_rate / cached_rate:.2f}   (aim >= 0.9)")
    from bench.bench_prepare import write_json  # noqa: PLC0415
    write_json(args.json, {"stage": "train", "unit": "steps/s", "limit_name": "same batches cached in memory",
                           "limit": cached_rate, "one": streaming_rate, "two": None, "two_mode": "-"})


if __name__ == "__main__":
    main()
