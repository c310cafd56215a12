"""Uplift benchmark: on a generated shop with a known per-customer effect, one past SMS coupon campaign with a
50% holdout over every customer who ever ordered; the T-learner fitted on all its arm members (the 1M target),
then fitted on 70% and measured on the 30% held out: targeting by uplift vs by churn risk vs at random.

    .venv/bin/python bench/bench_uplift.py --customers 1150000

(1.15M generated customers give about 1M who ordered before the send.)
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, parser, save  # noqa: E402
from campaigns.measurement.uplift import fit_t_learner  # noqa: E402
from wiring.generator import GeneratorConfig  # noqa: E402
from wiring.uplift_lab import LabConfig, prepare_lab, run_lab  # noqa: E402


def main() -> None:
    """Run the benchmark and write bench/results/uplift.json."""
    options = parser("none")
    options.add_argument("--channel", default="sms")
    args = options.parse_args()
    config = GeneratorConfig(customers=args.customers, seed=args.seed, end=date(2026, 11, 1))
    lab = LabConfig(send_at=datetime(2026, 9, 1, tzinfo=UTC), channel=args.channel, offer=True, seed=args.seed)
    shop = prepare_lab(config, lab)
    arms = shop.arms
    started = time.perf_counter()
    fit_t_learner(shop.features, arms["treated"].to_numpy(), arms["converted"].to_numpy(),
                  arms["customer_id"].to_numpy())
    fit_all = round(time.perf_counter() - started, 2)
    print(f"fit on all {arms.height:,} arm members: {fit_all} s", flush=True)
    measured = run_lab(config, lab, shop)
    measured.pop("qini_curve")
    results = {"machine": machine(), "customers": args.customers, "arm_members": arms.height,
               "fit_all_members_s": fit_all, "lab": measured,
               "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(results["lab"]["rankings"]), flush=True)
    print(f"wrote {save('uplift', results)}")


if __name__ == "__main__":
    main()
