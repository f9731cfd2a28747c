#!/usr/bin/env python3
"""A small typed client for Qoima's HTTP API, for lending services.

Standard library only (urllib.request + json), Python 3.9 or later: copy this file into your
service. Every call names the borrower by an opaque subject id; reads name a purpose. Problem
documents (application/problem+json) are raised as QoimaError subclasses carrying `type`,
`status`, `title` and `detail`; a 429 (over the caller's reads per minute) is raised as
RateLimited with the `retry_after` the vault names.

Every call that changes something sends an Idempotency-Key made for that call, and every call
is retried after a 503 ("nothing was done"), a 408 or a lost connection, a bounded number of
times with exponential backoff and jitter, with the same key and the same X-Request-Id: the
vault answers a retry of a call that went through with the first answer, so a retry never
does the work twice (see docs/integrator-guide.md, "Retries and idempotency"). A website
caller that must send subject assertions passes `subject_assertion`: a function of the subject
id giving a fresh assertion for each request (the vault accepts each one once).

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
import random
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

__all__ = [
    "BasisMissing",
    "Conflict",
    "Consent",
    "Contract",
    "Disclosure",
    "Erased",
    "Erasure",
    "Forbidden",
    "IdempotencyKeyInFlight",
    "IdempotencyKeyReused",
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


class IdempotencyKeyInFlight(QoimaError):
    """409 idempotency-key-in-flight: this call's first attempt is still being processed; the
    client retries it (after `retry_after`) and then gets its answer."""


class IdempotencyKeyReused(QoimaError):
    """422 idempotency-key-reused: the key was used for another request (a defect: each
    logical call has its own key)."""


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
    "idempotency-key-in-flight": IdempotencyKeyInFlight,
    "idempotency-key-reused": IdempotencyKeyReused,
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


# A subject assertion (one compact JWS, good for one request), or a function giving a fresh
# one for a subject id (or None to send none).
SubjectAssertion = Union[str, Callable[[str], Union[str, None]]]


class QoimaClient:
    """One caller of the vault (one bearer token).

    `attempts` bounds the tries of one call (the first included); the wait before retry n is
    random between 0 and min(`max_backoff`, `backoff` * 2**(n-1)) seconds. `subject_assertion`
    is sent as Qoima-Subject-Assertion with every request about a subject."""

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        subject_assertion: SubjectAssertion | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._assertion = subject_assertion

    def __repr__(self) -> str:  # never show the token
        return f"QoimaClient({self.base_url!r})"

    # --- subjects -------------------------------------------------------------------------

    def store(self, subject: str, fields: Mapping[str, Any]) -> WriteResult:
        """PUT: creates the subject or merges these fields into it."""
        return _make(WriteResult, self._call("PUT", f"/v1/subjects/{_id(subject)}", {"fields": dict(fields)}))

    def read(self, subject: str, purpose: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """The fields `purpose` allows (narrowed to `fields`), if its legal basis holds now."""
        query = {"purpose": purpose}
        if fields:
            query["fields"] = ",".join(fields)
        body = self._call("GET", f"/v1/subjects/{_id(subject)}?{urllib.parse.urlencode(query)}")
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
        return _make(Consent, self._call("POST", f"/v1/subjects/{_id(subject)}/consents", body))

    def withdraw_consent(self, subject: str, purpose: str) -> None:
        """Withdraws a consent; effective on the next read."""
        self._call("DELETE", f"/v1/subjects/{_id(subject)}/consents/{_id(purpose)}")

    # --- contracts ------------------------------------------------------------------------

    def open_contract(self, subject: str, contract: str) -> Contract:
        """Opens a loan contract (409 Conflict if it exists already)."""
        return _contract(self._call("POST", f"/v1/subjects/{_id(subject)}/contracts", {"contract": contract}))

    def settle_contract(self, subject: str, contract: str) -> Contract:
        """Settles a contract; if it was the last hold on a pending erasure, the erasure runs
        and the result carries it."""
        return self._set_contract(subject, contract, "settled")

    def breach_contract(self, subject: str, contract: str) -> Contract:
        return self._set_contract(subject, contract, "breached")

    def _set_contract(self, subject: str, contract: str, status: str) -> Contract:
        path = f"/v1/subjects/{_id(subject)}/contracts/{_id(contract)}"
        return _contract(self._call("PATCH", path, {"status": status}))

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
        `reference`, or "contract_breach"). Recorded and shown to the borrower. If the answer was
        lost and the retry finds the disclosure made, the vault answers with its record and no
        values (they went out once): `values` is then empty."""
        body: dict[str, Any] = {"recipient": recipient, "basis": basis, "fields": list(fields), "abroad": abroad}
        if reference is not None:
            body["reference"] = reference
        answer = self._call("POST", f"/v1/subjects/{_id(subject)}/disclosures", body)
        return _make(Disclosure, answer["disclosure"], values=dict(answer["fields"]))

    # --- erasure --------------------------------------------------------------------------

    def request_erasure(self, subject: str) -> Erasure:
        """Requests erasure (idempotent): "erased" at once, or "pending" while contracts hold it."""
        return _make(Erasure, self._call("POST", f"/v1/subjects/{_id(subject)}/erasure"))

    def erasure_status(self, subject: str) -> Erasure:
        return _make(Erasure, self._call("GET", f"/v1/subjects/{_id(subject)}/erasure"))

    # --- transport ------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        # One id and (for a change) one idempotency key for every attempt of this call.
        request_id = f"py-{uuid.uuid4().hex[:16]}"
        key = None if method == "GET" else f"py-{uuid.uuid4().hex}"
        for attempt in range(1, self.attempts + 1):
            try:
                return self._once(method, path, body, request_id, key)
            except (Unavailable, NoAnswer, IdempotencyKeyInFlight) as e:
                # 503: nothing was done. 408 or no answer: perhaps done, and then the retry,
                # with the same key, gets the first answer. In flight: the first attempt is
                # still running; the retry gets its answer.
                if attempt == self.attempts:
                    raise
                bound = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                time.sleep(max(random.uniform(0, bound), e.retry_after or 0))
        raise AssertionError("unreachable")

    def _once(self, method: str, path: str, body: Mapping[str, Any] | None, request_id: str, key: str | None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        request.add_header("X-Request-Id", request_id)
        if key is not None:
            request.add_header("Idempotency-Key", key)
        assertion = self._subject_assertion(path)
        if assertion:
            request.add_header("Qoima-Subject-Assertion", assertion)
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


    def _subject_assertion(self, path: str) -> str | None:
        """The assertion for a request about a subject, asked afresh for each attempt."""
        if self._assertion is None or not path.startswith("/v1/subjects/"):
            return None
        if isinstance(self._assertion, str):
            return self._assertion
        subject = urllib.parse.unquote(path[len("/v1/subjects/") :].split("/")[0].split("?")[0])
        return self._assertion(subject)


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
