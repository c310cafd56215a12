"""A local stand-in for Twilio, SendGrid, FCM (and Google's token endpoint) that speaks their HTTP APIs.

The real SDKs are pointed at it. It records every message it accepted (with our message id, recovered from
Twilio's status callback URL, SendGrid's custom args or FCM's data), so tests can assert "at most once", and it
can be told to misbehave: answer 429 with Retry-After, 500, an error code for some recipients, reset the
connection before taking the message, or take it and then hang (a timeout that leaves the fate unknown).

    python tests/support/fake_providers.py --port 0     # prints "listening on PORT", serves until killed
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TWILIO_PREFIX = "/2010-04-01/Accounts/"


class FakeState:
    """What the fake server holds: accepted messages, request counts and the faults still to inject."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        with self.lock:
            self.accepted: list[dict] = []
            self.requests: dict[str, int] = {}
            self.faults: list[dict] = []
            self.sequence = 0

    def take_fault(self, provider: str, to: str) -> dict | None:
        """The first fault that applies to this request (counted down when it has a number of times)."""
        with self.lock:
            for fault in self.faults:
                if fault.get("provider", "any") not in ("any", provider):
                    continue
                if fault.get("to_contains") and fault["to_contains"] not in to:
                    continue
                times = fault.get("times", 1)
                if times == 0:
                    continue
                if times > 0:
                    fault["times"] = times - 1
                return dict(fault)
        return None

    def accept(self, provider: str, message_id: str | None, to: str, body: str, extra: dict | None = None,
               clock_offset: float = 0.0) -> dict:
        """Record an accepted message and give it a provider id (its time on the provider's clock, which may be
        `clock_offset` seconds off ours)."""
        with self.lock:
            self.sequence += 1
            at = datetime.now(UTC) + timedelta(seconds=clock_offset)
            record = {"provider": provider, "message_id": message_id, "to": to, "body": body,
                      "sid": f"{'SM' if provider == 'twilio' else provider}{self.sequence:032d}",
                      "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), **(extra or {})}
            self.accepted.append(record)
            return record


STATE = FakeState()


class Handler(BaseHTTPRequestHandler):
    """Routes a request to the provider it imitates."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs do

    def log_message(self, *args) -> None:  # quiet
        return

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, payload: dict | list | None = None, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        self.wfile.write(data)

    def _count(self, name: str) -> None:
        with STATE.lock:
            STATE.requests[name] = STATE.requests.get(name, 0) + 1

    def _fault_before(self, fault: dict | None, provider: str) -> bool:
        """Faults that stop a request before the message is taken; True when the request is answered."""
        if fault is None:
            return False
        kind = fault["kind"]
        if kind == "reset":  # the connection drops before the provider reads the message
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        if kind in ("429", "500", "503"):
            headers = {"Retry-After": fault["retry_after"]} if "retry_after" in fault else {}
            if provider == "twilio":
                self._reply(int(kind), {"code": 20429 if kind == "429" else 20500, "message": f"fake {kind}",
                                        "status": int(kind)}, headers)
            elif provider == "fcm":
                status = "QUOTA_EXCEEDED" if kind == "429" else "UNAVAILABLE"
                self._reply(int(kind), {"error": {"code": int(kind), "status": status, "message": "fake",
                                                  "details": [{"errorCode": status}]}}, headers)
            else:
                self._reply(int(kind), {"errors": [{"message": f"fake {kind}"}]}, headers)
            return True
        if kind == "twilio_code":
            self._reply(400, {"code": fault["code"], "message": f"fake error {fault['code']}", "status": 400})
            return True
        if kind == "fcm_unregistered":
            self._reply(404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
                                        "details": [{"errorCode": "UNREGISTERED"}]}})
            return True
        return False

    def _fault_after(self, fault: dict | None) -> bool:
        """Faults after the message was taken: hang past the client's timeout, or drop the answer."""
        if fault is None:
            return False
        if fault["kind"] == "timeout":
            time.sleep(float(fault.get("seconds", 3)))
            self.close_connection = True
            return True
        if fault["kind"] == "reset_after":
            self.close_connection = True
            self.connection.shutdown(2)
            return True
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """Twilio's message list, and the fake's own log."""
        url = urlsplit(self.path)
        if url.path == "/_fake/log":
            with STATE.lock:
                return self._reply(200, {"accepted": STATE.accepted, "requests": STATE.requests})
        if url.path.startswith(TWILIO_PREFIX) and url.path.endswith("/Messages.json"):
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            since = query.get("DateSent>", "")
            with STATE.lock:
                found = [m for m in STATE.accepted if m["provider"] == "twilio" and m["to"] == query.get("To")
                         and m["at"] >= since]
            self._count("twilio_list")
            return self._reply(200, {"messages": [self._twilio_message(m) for m in found], "next_page_uri": None,
                                     "page": 0, "page_size": 100, "start": 0, "end": len(found), "uri": url.path,
                                     "first_page_uri": url.path, "previous_page_uri": None})
        self._reply(404, {"message": "not found"})

    @staticmethod
    def _twilio_message(m: dict) -> dict:
        # Twilio writes its dates in RFC 2822 ("Tue, 01 Dec 2026 20:00:00 +0000"), as the SDK parses them.
        stamp = format_datetime(datetime.strptime(m["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC))
        return {"sid": m["sid"], "status": "queued", "to": m["to"], "from": m.get("from"), "body": m["body"],
                "account_sid": m.get("account_sid"), "num_segments": "1", "date_created": stamp,
                "date_sent": stamp, "messaging_service_sid": m.get("messaging_service_sid")}

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """Sends, the OAuth token, and the fake's controls."""
        url = urlsplit(self.path)
        raw = self._body()
        if url.path == "/_fake/faults":
            with STATE.lock:
                STATE.faults.extend(json.loads(raw or b"[]"))
            return self._reply(200, {"ok": True})
        if url.path == "/_fake/reset":
            STATE.reset()
            return self._reply(200, {"ok": True})
        if url.path == "/token":
            self._count("token")
            return self._reply(200, {"access_token": "fake-access-token", "expires_in": 3600, "token_type": "Bearer"})
        if url.path.startswith(TWILIO_PREFIX) and url.path.endswith("/Messages.json"):
            return self._twilio_send(url.path, raw)
        if url.path == "/v3/mail/send":
            return self._sendgrid_send(raw)
        if url.path.endswith("/messages:send"):
            return self._fcm_send(raw)
        self._reply(404, {"message": "not found"})

    def _twilio_send(self, path: str, raw: bytes) -> None:
        self._count("twilio")
        auth = self.headers.get("Authorization", "")
        account = path[len(TWILIO_PREFIX):].split("/")[0]
        if not auth.startswith("Basic ") or not base64.b64decode(auth[6:]).decode().startswith(account + ":"):
            return self._reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        to = form.get("To", "")
        fault = STATE.take_fault("twilio", to)
        if self._fault_before(fault, "twilio"):
            return None
        callback = form.get("StatusCallback", "")
        message_id = parse_qs(urlsplit(callback).query).get("message_id", [None])[0]
        body = form.get("Body", "")
        if fault and fault.get("rewrite"):  # as Twilio's smart encoding and an appended opt-out footer would
            body = body.replace("'", "\u2019").replace(" - ", " \u2013 ") + " Reply STOP to unsubscribe."
        record = STATE.accept("twilio", message_id, to, body,
                              {"from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"),
                               "account_sid": account, "status_callback": callback},
                              clock_offset=float(fault.get("clock_offset", 0)) if fault else 0.0)
        if self._fault_after(fault):
            return None
        return self._reply(201, self._twilio_message(record))

    def _sendgrid_send(self, raw: bytes) -> None:
        self._count("sendgrid")
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            return self._reply(401, {"errors": [{"message": "authorization required"}]})
        mail = json.loads(raw)
        personalization = mail["personalizations"][0]
        to = personalization["to"][0]["email"]
        fault = STATE.take_fault("sendgrid", to)
        if self._fault_before(fault, "sendgrid"):
            return None
        args = mail.get("custom_args") or personalization.get("custom_args") or {}
        text = next((c["value"] for c in mail.get("content", []) if c["type"] == "text/plain"), "")
        record = STATE.accept("sendgrid", args.get("message_id"), to, text,
                              {"subject": mail.get("subject") or personalization.get("subject"),
                               "headers": mail.get("headers", {}), "asm": mail.get("asm")})
        if self._fault_after(fault):
            return None
        return self._reply(202, None, {"X-Message-Id": record["sid"]})

    def _fcm_send(self, raw: bytes) -> None:
        self._count("fcm")
        if self.headers.get("Authorization") != "Bearer fake-access-token":
            return self._reply(401, {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "no token"}})
        message = json.loads(raw)["message"]
        fault = STATE.take_fault("fcm", message["token"])
        if self._fault_before(fault, "fcm"):
            return None
        record = STATE.accept("fcm", message.get("data", {}).get("message_id"), message["token"],
                              message["notification"]["body"], {"title": message["notification"].get("title")})
        if self._fault_after(fault):
            return None
        return self._reply(200, {"name": f"projects/fake/messages/{record['sid']}"})


class FakeServer(ThreadingHTTPServer):
    """A thread per connection, and a listen backlog a burst of 64 concurrent senders fits in (the default is 5),
    as a real provider's would."""

    daemon_threads = True
    request_queue_size = 256


def serve(port: int = 0) -> ThreadingHTTPServer:
    """Start the fake in a background thread; returns the server (its port in server_address)."""
    server = FakeServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    """Serve in the foreground (for subprocess use in tests and benchmarks)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = FakeServer(("127.0.0.1", args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
