"""The sending ceiling: the SDK senders (Twilio, SendGrid, FCM) to the local fake providers with the dispatcher's
concurrency (4 processes x 16 threads) and no database at all. bench_pipeline.py quotes the dispatcher's rate as a
share of it, measured in the same run.

    .venv/bin/python -m bench.provider_ceiling BASE_URL DATA_DIR '{"sms": 7700, "email": 50, "push": 230}'
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from campaigns.delivery.channels import build_senders
from campaigns.delivery.channels.base import Outgoing
from tests.support.dispatch_support import fake_settings


def work(args):
    """One process: its share of the messages through the senders, 16 at a time; (sent, seconds)."""
    base, data_dir, mix, start = args
    folder = Path(data_dir) / f"ceiling-{start}"
    folder.mkdir(parents=True, exist_ok=True)
    settings = fake_settings(folder, base, "")
    senders = build_senders(settings)
    to = {"sms": ("+8613800000000",), "email": ("bench@example.com",), "push": ("token-bench",)}
    parts = {"sms": {"body": "Hi: 50 off orders of 300 or more. Reply STOP to opt out"},
             "email": {"subject": "Hi", "text": "Hi u", "html": "<p>Hi u</p>"}, "push": {"title": "Hi", "body": "Hi"}}
    jobs = [Outgoing(message_id=start + i, customer_id=start + i, campaign="bench", channel=channel,
                     to=to[channel], parts=parts[channel], unsubscribe_url="u")
            for channel, count in mix.items() for i in range(count)]
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda o: senders[o.channel].send(o).outcome, jobs))
    return len([o for o in outcomes if o == "sent"]), time.perf_counter() - started

if __name__ == "__main__":
    base, data_dir, mix = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    share = {k: v // 4 for k, v in mix.items()}
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        parts = pool.map(work, [(base, data_dir, share, n * 10_000_000) for n in range(4)])
    wall = time.perf_counter() - started
    sent = sum(p[0] for p in parts)
    sending = max(p[1] for p in parts)  # the slowest process's sending time: start-up (SDK import, keys) excluded
    print(json.dumps({"processes": 4, "threads": 16, "sent": sent, "seconds": round(sending, 1),
                      "wall_seconds": round(wall, 1), "messages_per_second": round(sent / sending)}))
