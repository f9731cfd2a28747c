#!/usr/bin/env python3
"""A small typed client for Qoima's HTTP API, for lending services.

Standard library only (urllib.request + json), Python 3.9 or later: copy this file into your
service. Every call names the borrower by an opaque subject id; reads name a purpose. Problem
documents (application/problem+json) are raised as QoimaError subclasses carrying `type`,
`status`, `title` and `detail`; a 429 (over the caller's reads per minute) is raised as
RateLimited with the `retry_after` the vault names; a 503 ("nothing was done") is retried with backoff, and
timeouts or lost connections are retried only for calls that are safe to repeat (see
docs/integrator-guide.md, "Retries and idempotency"). A retried call keeps its X-Request-Id,
so the vault's audit trail shows the retries as one intent.

Run it as a script for a demonstration against a running vault:

    QOIMA_URL=http://127.0.0.1:8750 QOIMA_SERVICE_TOKEN=qv1_… [QOIMA_WEBSITE_TOKEN=qv1_…] \\
        python3 docs/examples/lending_client.py

The service token must be granted loan_issuance, loan_monitoring, third_party_transfer and
advertising (the development vault's dev-service is). Never log what read() returns: it is
personal data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "BasisMissing",
    "Conflict",
    "Consent",
    "Contract",
    "Disclosure",
    "Erased",
    "Erasure",
    "Forbidden",
    "InvalidRequest",
    "KeyDestroyed",
    "NoAnswer",
    "NotFound",
    "QoimaClient",
    "QoimaError",
    "Unauthenticated",
    "Unavailable",
    "WriteResult",
]

PROBLEM_PREFIX = "urn:qoima:problem:"


class QoimaError(Exception):
    """A problem document from the vault, or a call that got no answer (status 0)."""

    def __init__(
        self,
        type: str,
        status: int,
        title: str,
        detail: str,
        request_id: str,
        receipt: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{status} {type}: {detail}")
        self.type = type
        self.status = status
        self.title = title
        self.detail = detail
        self.request_id = request_id
        self.receipt = receipt
        self.retry_after = retry_after  # seconds, from Retry-After (429)

    @property
    def slug(self) -> str:
        """The last part of `type`, e.g. "basis-missing"."""
        return self.type.removeprefix(PROBLEM_PREFIX)


class InvalidRequest(QoimaError):
    """400: fix the request; retrying it as is will not help."""


class Unauthenticated(QoimaError):
    """401: the token is missing or unknown."""


class Forbidden(QoimaError):
    """403 forbidden: this caller lacks the role or the purpose (a configuration matter)."""


class BasisMissing(QoimaError):
    """403 basis-missing: the purpose's legal basis does not hold for this borrower now."""


class NotFound(QoimaError):
    """404: unknown subject, contract, consent or route."""


class Conflict(QoimaError):
    """409: the contract exists already or is settled."""


class Erased(QoimaError):
    """410 erased: the borrower was crypto-shredded; `receipt` names the erasure. Final."""


class KeyDestroyed(QoimaError):
    """410 key-destroyed: the key generation that wrapped the borrower's key is gone. Final."""


class RateLimited(QoimaError):
    """429: this caller is over its reads per minute; nothing was read. Wait `retry_after`
    seconds. Not retried here: the wait can be long, and whether to wait is the caller's call."""


class Unavailable(QoimaError):
    """503: the vault could not record the call durably, so it did nothing; retry later."""


class NoAnswer(QoimaError):
    """No answer, or 408 request-timeout: the call may or may not have taken effect."""


_BY_SLUG = {
    "invalid-request": InvalidRequest,
    "unauthenticated": Unauthenticated,
    "forbidden": Forbidden,
    "basis-missing": BasisMissing,
    "not-found": NotFound,
    "conflict": Conflict,
    "erased": Erased,
    "key-destroyed": KeyDestroyed,
    "unavailable": Unavailable,
    "rate-limited": RateLimited,
    "request-timeout": NoAnswer,
}


@dataclass(frozen=True)
class WriteResult:
    subject: str
    version: int
    created: bool
    missing_mandatory: list[str]


@dataclass(frozen=True)
class Consent:
    purpose: str
    policy_version: str
    given_at: str
    valid_until: str | None
    withdrawn_at: str | None
    third_parties: bool
    abroad: bool
    recorded_by: str


@dataclass(frozen=True)
class Erasure:
    subject: str
    status: str  # "pending" or "erased"
    receipt: str
    held_by: list[str]
    requested_at: str
    erased_at: str | None
    key_fingerprint: str | None
    kek_generation: int | None
    statement: str


@dataclass(frozen=True)
class Contract:
    subject: str
    contract: str
    status: str  # "open", "settled" or "breached"
    opened_at: str
    updated_at: str
    erasure: Erasure | None = None


@dataclass(frozen=True)
class Disclosure:
    id: str
    recipient: str
    basis: str
    reference: str | None
    fields: list[str]
    abroad: bool
    caller: str
    time: str
    values: dict[str, Any] = field(repr=False, default_factory=dict)  # what to send, nothing more


T = TypeVar("T")


def _make(cls: type[T], body: Mapping[str, Any], **extra: Any) -> T:
    """`cls` from a JSON object, ignoring fields a newer vault may add."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in body.items() if k in names and k not in extra}, **extra)


def _contract(body: Mapping[str, Any]) -> Contract:
    erasure = body.get("erasure")
    return _make(Contract, body, erasure=_make(Erasure, erasure) if erasure else None)


class QoimaClient:
    """One caller of the vault (one bearer token)."""

    def __init__(self, base_url: str, token: str, timeout: float = 10.0, attempts: int = 4, backoff: float = 0.2):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff

    def __repr__(self) -> str:  # never show the token
        return f"QoimaClient({self.base_url!r})"

    # --- subjects -------------------------------------------------------------------------

    def store(self, subject: str, fields: Mapping[str, Any]) -> WriteResult:
        """PUT: creates the subject or merges these fields into it (safe to repeat)."""
        return _make(
            WriteResult, self._call("PUT", f"/v1/subjects/{_id(subject)}", {"fields": dict(fields)}, repeatable=True)
        )

    def read(self, subject: str, purpose: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """The fields `purpose` allows (narrowed to `fields`), if its legal basis holds now."""
        query = {"purpose": purpose}
        if fields:
            query["fields"] = ",".join(fields)
        body = self._call("GET", f"/v1/subjects/{_id(subject)}?{urllib.parse.urlencode(query)}", repeatable=True)
        return dict(body["fields"])

    # --- consents -------------------------------------------------------------------------

    def give_consent(
        self,
        subject: str,
        purpose: str,
        policy_version: str | None = None,
        valid_until: str | None = None,
        third_parties: bool | None = None,
        abroad: bool = False,
    ) -> Consent:
        """Records a consent; `valid_until` is RFC 3339. Giving it again replaces it."""
        body: dict[str, Any] = {"purpose": purpose, "abroad": abroad}
        if policy_version is not None:
            body["policy_version"] = policy_version
        if valid_until is not None:
            body["valid_until"] = valid_until
        if third_parties is not None:
            body["third_parties"] = third_parties
        return _make(Consent, self._call("POST", f"/v1/subjects/{_id(subject)}/consents", body, repeatable=True))

    def withdraw_consent(self, subject: str, purpose: str) -> None:
        """Withdraws a consent; effective on the next read (safe to repeat)."""
        self._call("DELETE", f"/v1/subjects/{_id(subject)}/consents/{_id(purpose)}", repeatable=True)

    # --- contracts ------------------------------------------------------------------------

    def open_contract(self, subject: str, contract: str) -> Contract:
        """Opens a loan contract. After a lost answer a retry may meet 409 "already exists
        (open)", which then means the first call went through."""
        return _contract(
            self._call("POST", f"/v1/subjects/{_id(subject)}/contracts", {"contract": contract}, repeatable=True)
        )

    def settle_contract(self, subject: str, contract: str) -> Contract:
        """Settles a contract; if it was the last hold on a pending erasure, the erasure runs
        and the result carries it."""
        return self._set_contract(subject, contract, "settled")

    def breach_contract(self, subject: str, contract: str) -> Contract:
        return self._set_contract(subject, contract, "breached")

    def _set_contract(self, subject: str, contract: str, status: str) -> Contract:
        path = f"/v1/subjects/{_id(subject)}/contracts/{_id(contract)}"
        return _contract(self._call("PATCH", path, {"status": status}, repeatable=True))

    # --- disclosures ----------------------------------------------------------------------

    def disclose(
        self,
        subject: str,
        recipient: str,
        basis: str,
        fields: Sequence[str],
        reference: str | None = None,
        abroad: bool = False,
    ) -> Disclosure:
        """Discloses `fields` to a third party on `basis` ("consent", "legal_obligation" with a
        `reference`, or "contract_breach"). Recorded and shown to the borrower, so it is NOT
        repeated after a lost answer (only after a 503, when nothing was disclosed)."""
        body: dict[str, Any] = {"recipient": recipient, "basis": basis, "fields": list(fields), "abroad": abroad}
        if reference is not None:
            body["reference"] = reference
        answer = self._call("POST", f"/v1/subjects/{_id(subject)}/disclosures", body, repeatable=False)
        return _make(Disclosure, answer["disclosure"], values=dict(answer["fields"]))

    # --- erasure --------------------------------------------------------------------------

    def request_erasure(self, subject: str) -> Erasure:
        """Requests erasure (idempotent): "erased" at once, or "pending" while contracts hold it."""
        return _make(Erasure, self._call("POST", f"/v1/subjects/{_id(subject)}/erasure", repeatable=True))

    def erasure_status(self, subject: str) -> Erasure:
        return _make(Erasure, self._call("GET", f"/v1/subjects/{_id(subject)}/erasure", repeatable=True))

    # --- transport ------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, repeatable: bool) -> Any:
        request_id = f"py-{uuid.uuid4().hex[:16]}"  # one id for every attempt of this call
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return self._once(method, path, body, request_id)
            except Unavailable:
                # 503 means nothing was done: any call may be repeated.
                if attempt == self.attempts:
                    raise
            except NoAnswer:
                # No answer (or 408) may hide a success: only calls safe to repeat are.
                if attempt == self.attempts or not repeatable:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, body: Mapping[str, Any] | None, request_id: str) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        request.add_header("X-Request-Id", request_id)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                text = response.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            raise _problem(e.code, e.read(), e.headers.get("x-request-id", request_id), e.headers.get("retry-after")) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise NoAnswer(
                PROBLEM_PREFIX + "no-answer", 0, "No answer", f"no answer from the vault: {reason}", request_id
            ) from None


def _id(segment: str) -> str:
    """A path segment, escaped (the vault refuses ids outside ^[A-Za-z0-9._-]{1,128}$ anyway)."""
    return urllib.parse.quote(segment, safe="")


def _problem(status: int, raw: bytes, request_id: str, retry_after: str | None = None) -> QoimaError:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    kind = str(doc.get("type", f"{PROBLEM_PREFIX}http-{status}"))
    cls = _BY_SLUG.get(kind[len(PROBLEM_PREFIX) :], QoimaError)
    title = str(doc.get("title", ""))
    detail = str(doc.get("detail", "the vault answered without a problem document"))
    wait = float(retry_after) if retry_after and retry_after.isdigit() else None
    return cls(kind, int(doc.get("status", status)), title, detail, request_id, doc.get("receipt"), wait)


# --- the demonstration -------------------------------------------------------------------


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"lending_client.py: set {name} (see the docstring at the top of this file)")
    return value


def main() -> int:
    url = os.environ.get("QOIMA_URL", "http://127.0.0.1:8750")
    service = QoimaClient(url, _env("QOIMA_SERVICE_TOKEN"))
    website = QoimaClient(url, os.environ["QOIMA_WEBSITE_TOKEN"]) if os.environ.get("QOIMA_WEBSITE_TOKEN") else service
    subject = os.environ.get("QOIMA_DEMO_SUBJECT") or f"demo-{uuid.uuid4().hex[:12]}"
    contract = f"L-{uuid.uuid4().hex[:10]}"

    # 1. Origination stores the application (made-up data).
    w = service.store(
        subject,
        {
            "identity.full_name": "Demo Borrower",
            "identity.iin": "900101300017",
            "identity.birth_date": "1990-01-01",
            "identity.phone": "+77010000000",
            "identity.email": "demo@example.kz",
            "questionnaire.monthly_income": 350000,
        },
    )
    print(f"stored {w.subject}: version {w.version}, created {w.created}, missing {w.missing_mandatory}")

    # 2. It reads what loan issuance may see; only the field names are printed here.
    fields = service.read(subject, "loan_issuance")
    print(f"read for loan_issuance: {sorted(fields)}")

    # 3. Advertising needs a consent: a business outcome, raised as BasisMissing.
    try:
        service.read(subject, "advertising")
    except BasisMissing as e:
        print(f"advertising refused: {e.status} {e.slug}: {e.detail}")

    # 4. The borrower consents on the website; advertising now sees contact fields only.
    c = website.give_consent(subject, "advertising")
    print(f"consent for {c.purpose} given under policy {c.policy_version}")
    print(f"read for advertising: {sorted(service.read(subject, 'advertising'))}")

    # 5. A loan is issued and monitored.
    k = service.open_contract(subject, contract)
    print(f"contract {k.contract} {k.status}")
    print(f"read for loan_monitoring: {sorted(service.read(subject, 'loan_monitoring', ['identity.phone']))}")

    # 6. With the borrower's consent for transfers, the credit bureau gets name and IIN.
    website.give_consent(subject, "third_party_transfer")
    d = service.disclose(subject, "First Credit Bureau", "consent", ["identity.full_name", "identity.iin"])
    print(f"disclosed {d.fields} to {d.recipient} on {d.basis} ({d.id})")

    # 7. The borrower asks for erasure while the loan is open: pending, held by the contract.
    erasure = website.request_erasure(subject)
    print(f"erasure {erasure.status}, held by {erasure.held_by}, receipt {erasure.receipt}")

    # 8. The loan is repaid: settling it runs the erasure.
    k = service.settle_contract(subject, contract)
    assert k.erasure is not None
    print(f"contract {k.contract} {k.status}; erasure {k.erasure.status} (KEK generation {k.erasure.kek_generation})")

    # 9. From now on the borrower's data is gone for good.
    try:
        service.read(subject, "loan_issuance")
    except Erased as gone:
        print(f"read after erasure: {gone.status} {gone.slug}, receipt {gone.receipt}")
    print("demo complete")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QoimaError as failure:
        sys.exit(f"lending_client.py: {failure} (request id {failure.request_id})")
