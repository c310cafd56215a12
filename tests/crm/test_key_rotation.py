"""Secret rotation: every ciphertext and lookup hash names its key; with the old key kept as previous, reads,
lookups and API keys work throughout `crm secrets rotate`, which moves every row to the new key while requests
and writes go on; afterwards the old key can be dropped."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import update
from sqlmodel import select

from crm import auth, key_rotation, service, writes
from crm.models import ApiKey, Customer, Role
from kit.clock import FixedClock
from kit.context import Context
from kit.crypto import ContactCipher, _derive
from kit.db import make_engine, session_scope
from kit.migrations import upgrade_to_head
from tests.conftest import TEST_NOW, cli_env
from tests.support import factories

OLD, NEW = "old-secret-" + "o" * 33, "new-secret-" + "n" * 33
CUSTOMERS = 120


def _shop(url, settings, cipher) -> Context:
    engine = make_engine(url)
    upgrade_to_head(engine)
    ctx = Context(settings=settings, engine=engine, cipher=cipher, clock=FixedClock(TEST_NOW))
    rows = [(f"R{i}", f"rot{i}@example.com", f"+86138{i:08d}", f"Name {i}", "Asia/Shanghai", "zh-CN")
            for i in range(1, CUSTOMERS + 1)]
    with session_scope(engine) as session:
        factories.run(session, ctx, "customers", factories.csv_text(
            ("external_id", "email", "phone", "name", "time_zone", "locale"), rows))
    return ctx


def _legacy_ciphertext(secret: str, plaintext: str) -> bytes:
    """A value as stored before ciphertexts named their key: nonce + sealed text."""
    nonce = os.urandom(12)
    return nonce + AESGCM(_derive(secret, b"contact-encryption")).encrypt(nonce, plaintext.encode(), None)


def _write_retrying(ctx: Context, item: dict) -> None:
    """A write as a client makes it: SQLite's single writer may be busy (the API answers 503), so retry."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(20):
        try:
            with session_scope(ctx.engine) as session:
                writes.write_items(session, ctx, "customers", item, cause="api")
            return
        except OperationalError:
            if attempt == 19:
                raise
            time.sleep(0.05)


def test_values_name_their_key_and_previous_keys_still_read():
    old, rotated = ContactCipher(OLD), ContactCipher(NEW, [OLD])
    sealed = old.encrypt("ana@example.com")
    assert old.key_id_of(sealed) == old.key_id != rotated.key_id
    assert rotated.decrypt(sealed) == "ana@example.com" and not rotated.is_current(sealed)
    assert rotated.decrypt(_legacy_ciphertext(OLD, "legacy@example.com")) == "legacy@example.com"
    assert old.blind_index("ana@example.com") in rotated.blind_indexes("ana@example.com")
    assert rotated.blind_index("ana@example.com").startswith(rotated.key_id + ":")
    assert len(rotated.blind_index("ana@example.com")) == 64
    link = old.sign_link("unsubscribe", "42")  # in an email sent before the rotation
    assert rotated.verify_link("unsubscribe", link) == "42" and ContactCipher(NEW).verify_link("unsubscribe", link) is None
    assert ContactCipher(NEW).hash_api_key("crm_x_y") == old.hash_api_key("crm_x_y")  # API keys need no secret


def test_rotation_under_load_keeps_every_read_lookup_and_key_working(scratch_url, settings):
    before = _shop(scratch_url, settings, ContactCipher(OLD))
    with session_scope(before.engine) as session:
        secret = auth.create_key(session, before, name="rot", role=Role.support, actor="test").secret
        legacy_hash = ContactCipher(OLD).api_key_hashes(secret)[1]  # as keys were stored before: keyed by the secret
        session.execute(update(ApiKey).where(ApiKey.name == "rot").values(key_hash=legacy_hash))
        session.execute(update(Customer).where(Customer.external_id == "R1").values(
            email_ciphertext=_legacy_ciphertext(OLD, "rot1@example.com")))
    during = Context(settings=settings, engine=before.engine, cipher=ContactCipher(NEW, [OLD]), clock=before.clock)
    with session_scope(during.engine) as session:
        assert key_rotation.pending(session, during) == CUSTOMERS

    failures, reads, stop = [], [0], threading.Event()

    def requests_meanwhile() -> None:
        """What the running service does meanwhile: lookups by email, profile reads, key checks, updates."""
        n = 0
        while not stop.is_set():
            n = n % CUSTOMERS + 1
            try:
                with session_scope(during.engine) as session:
                    found = service.find_customers(session, during, email=f"rot{n}@example.com", limit=5)
                    contact = service.contact_of(during, found[0], masked=False) if found else {}
                    if [c.external_id for c in found] != [f"R{n}"] or contact.get("email") != f"rot{n}@example.com":
                        failures.append((n, [c.external_id for c in found], contact.get("email")))
                    auth.authenticate(session, during, secret)
                reads[0] += 1
                if n % 10 == 0:  # a customer changes their number while the rotation runs
                    _write_retrying(during, {"external_id": f"R{n}", "phone": f"+86139{n:08d}"})
            except Exception as error:  # noqa: BLE001 - every failure is what this test reports
                failures.append((n, repr(error)))

    worker = threading.Thread(target=requests_meanwhile)
    worker.start()
    try:
        outcome = key_rotation.rotate(during, batch=7)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not failures, failures[:5]
    assert reads[0] > 0 and outcome["customers_pending"] == 0
    assert outcome["rotated"] + outcome["changed_meanwhile"] <= CUSTOMERS and outcome["rotated"] > 0

    after = Context(settings=settings, engine=before.engine, cipher=ContactCipher(NEW), clock=before.clock)
    with session_scope(after.engine) as session:  # the old key dropped: everything still reads and matches
        rows = session.exec(select(Customer).order_by(Customer.id)).all()
        assert all(after.cipher.key_id_of(getattr(c, f"{f}_ciphertext")) == after.cipher.key_id
                   for c in rows for f in ("email", "phone", "name"))
        assert [c.external_id for c in service.find_customers(session, after, email="rot1@example.com")] == ["R1"]
        assert service.contact_of(after, rows[9], masked=False)["phone"] == "+8613900000010"  # the update kept
        assert [c.external_id for c in service.find_customers(session, after, phone="+8613900000010")] == ["R10"]
        assert auth.authenticate(session, after, secret).name == "rot"  # upgraded when first used


def test_secrets_cli_reports_and_rotates(scratch_url, tmp_path, settings):
    _shop(scratch_url, settings, ContactCipher(OLD))
    env = cli_env(scratch_url, tmp_path) | {"CRM_SECRET_KEY": NEW, "CRM_SECRET_KEY_PREVIOUS": OLD}
    run = lambda *args: subprocess.run([sys.executable, "-m", "wiring.cli", "secrets", *args], env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    assert f"{CUSTOMERS:,}" in run("status").stdout
    rotated = run("rotate", "--batch", "50")
    assert rotated.returncode == 0 and f"{CUSTOMERS:,} customers re-encrypted" in rotated.stdout, rotated.stderr
    assert "0 still pending" in rotated.stdout
    status = run("status").stdout
    assert ContactCipher(NEW).key_id in status and ContactCipher(OLD).key_id in status
    fresh = run("new-key").stdout.strip()
    assert len(fresh) >= 43 and fresh != run("new-key").stdout.strip()
