"""Run every benchmark with its default sizes (see bench/README.md)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    # Segmentation loads the database churn, campaigns and the pipeline reuse, so the order matters.
    for script in (HERE / name for name in ("bench_foundation.py", "bench_segmentation.py", "bench_churn.py",
                                            "bench_campaigns.py", "bench_pipeline.py", "bench_reports.py",
                                            "bench_dispatch.py")):
        print(f"== {script.name}", flush=True)
        subprocess.run([sys.executable, str(script), *sys.argv[1:]], check=True)
