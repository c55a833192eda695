"""A language model run's validation split evaluated at one batch size: seconds, peak RSS and the sums.

    python -m benchmarks.lm_eval_batch RUN [--batch N]     # default: bigmodel's default for the run's data

One size per process, so that the peak RSS is that size's own.
"""

from __future__ import annotations

import argparse
import resource
import time

from bigmodel.engine.trainer import eval_loader
from bigmodel.evaluation.scoring import load_with_data
from bigmodel.tasks import task_for


def main() -> int:
    about = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.lm_eval_batch", description=about)
    p.add_argument("run")
    p.add_argument("--batch", type=int, default=None)
    args = p.parse_args()
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch must be at least 1, got {args.batch}")
    loaded, data, device, dtype = load_with_data(args.run)
    # Without --batch, today's default, even where the run's config.yaml recorded an older one.
    train_cfg = loaded.config.train.model_copy(update={"eval_batch_size": args.batch})
    loader = eval_loader(data.val, data, train_cfg)
    size = loader.batch_size
    start = time.perf_counter()
    sums = task_for(data.info).evaluate(loaded.model, loader, device, dtype)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"batch {size}: {len(data.val)} blocks in {seconds:.1f} s, peak RSS {rss:,.0f} MiB")
    print(f"sums (loss, predicted tokens, correct): {sums.tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
