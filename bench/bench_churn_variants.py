"""Churn on transaction-only logs, per generator variant: `crm churn evaluate` on the generator's plain orders.csv
(standard shop, and the hard variant: drifting purchase rates, strong seasons, promotions that pull orders
forward, customers back after long gaps), the shipped score against the best of recency and BG/NBD; and the
predictive fields' decile calibration out of time (predicted vs realised purchase days and spend in 90 days).

    .venv/bin/python bench/bench_churn_variants.py --customers 20000 --seeds 1,2,3
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, parser, run_json, save  # noqa: E402
from churn.evaluation import predictive_calibration, read_transactions  # noqa: E402
from wiring.generator import GeneratorConfig, write_dataset  # noqa: E402


def evaluate(orders: Path) -> dict:
    """`crm churn evaluate` on one orders.csv (test cut-off 2026-08-01, the 90 days after it as the label)."""
    return run_json("-m", "wiring.cli", "churn", "evaluate", "--transactions", str(orders), "--cutoff", "2026-08-01",
                    "--customer-col", "customer_external_id", "--amount-col", "amount_paid", "--json")


def summary(result: dict) -> dict:
    """The figures the benchmarks doc quotes."""
    best_name, best = max(result["baselines"].items(), key=lambda item: item[1]["roc_auc"])
    flag = result["flag"]
    return {"customers": result["n_customers"], "churn_rate": result["churn_rate"], "shipped": result["shipped"],
            "roc_auc": result["roc_auc"], "best_baseline": best_name, "best_baseline_roc_auc": best["roc_auc"],
            "margin": round(result["roc_auc"] - best["roc_auc"], 4), "brier": result["brier"],
            "baseline_briers": {k: v["brier"] for k, v in result["baselines"].items()},
            "flag": {k: flag[k] for k in ("base_rate", "flagged", "precision", "recall", "lift", "met")}}


def main() -> None:
    """Run the benchmark and write bench/results/churn_variants.json."""
    options = parser("none")
    options.add_argument("--seeds", default="1,2,3")
    options.set_defaults(customers=20_000)
    args = options.parse_args()
    results: dict = {"machine": machine(), "customers": args.customers, "variants": {}}
    for variant in ("standard", "hard"):
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            out = args.data / "variants" / f"{variant}-{args.customers}-{seed}"
            if not (out / "orders.csv").exists():
                write_dataset(GeneratorConfig.variant(variant, customers=args.customers, seed=seed,
                                                      end=date(2026, 11, 1)), out)
            rows.append({"seed": seed} | summary(evaluate(out / "orders.csv")))
            print(f"{variant} seed {seed}: {rows[-1]}", flush=True)
        results["variants"][variant] = rows
        # The predictive fields out of time on the first seed's shop: trained before 2026-08-03, the 90 days after.
        orders, _ = read_transactions(args.data / "variants" / f"{variant}-{args.customers}-{rows[0]['seed']}"
                                      / "orders.csv", customer_col="customer_external_id", time_col="ordered_at",
                                      amount_col="amount_paid")
        results["calibration"] = results.get("calibration", {}) | {
            variant: predictive_calibration(orders, datetime(2026, 8, 3, tzinfo=UTC))}
        print(f"{variant} calibration: {results['calibration'][variant]}", flush=True)
    print(f"wrote {save('churn_variants', results)}")


if __name__ == "__main__":
    main()
