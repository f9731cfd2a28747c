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
does the work twice (see docs/integrator-guide.md, "Retries and idempotency"); a lookup is a
read (posted so that the value stays out of the URL) and is retried like one, without a key. A website
caller that must send subject assertions passes `subject_assertion`: a function of the subject
id giving a fresh assertion for each request (the vault accepts each one once).

Run it as a script for a demonstration against a running vault:

    QOIMA_URL=http://127.0.0.1:8750 QOIMA_SERVICE_TOKEN=qv1_… [QOIMA_WEBSITE_TOKEN=qv1_…] \\
        python3 docs/examples/lending_client.py

The service token must be granted loan_issuance, loan_monitoring, third_party_transfer and
advertising (the development vault's dev-service is). Never log what read() returns, nor the
values you look up: they are personal data.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "ImportResult",
    "IndexBuilding",
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
LOOKUP_PATH = "/v1/lookup"
BATCH_LIMIT = 1000  # subjects per POST /v1/subjects:batch


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
    """409: the contract exists already or is settled; or, from store(), a unique field's value
    (identity.iin by default) is held by another live subject and nothing was stored. Then
    `field` is the field the vault names, among those sent; look the value up to find the
    subject that holds it (the vault never names it in the error)."""

    field: str | None = None


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


class IndexBuilding(Unavailable):
    """503 index-building: the vault is still building the index of the field looked up, so
    nothing was looked up (never a silent []); retried after `retry_after` like any 503."""


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
    "index-building": IndexBuilding,
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
class ImportResult:
    """One subject of import_subjects(): `status` 201 (created), 200 (updated) or a 4xx with
    `problem` saying why that subject, and only it, was refused."""

    subject: str
    status: int
    version: int | None = None
    problem: QoimaError | None = None


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
        """PUT: creates the subject or merges these fields into it. Conflict (409) if a unique
        field's value belongs to another live subject: its `field` names the field."""
        try:
            return _make(WriteResult, self._call("PUT", f"/v1/subjects/{_id(subject)}", {"fields": dict(fields)}))
        except Conflict as e:
            e.field = _named_field(e.detail, fields)
            raise

    def read(self, subject: str, purpose: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """The fields `purpose` allows (narrowed to `fields`), if its legal basis holds now."""
        query = {"purpose": purpose}
        if fields:
            query["fields"] = ",".join(fields)
        body = self._call("GET", f"/v1/subjects/{_id(subject)}?{urllib.parse.urlencode(query)}")
        return dict(body["fields"])

    # --- lookup and import ----------------------------------------------------------------

    def lookup(self, field: str, value: str, purpose: str) -> list[str]:
        """The ids of the live subjects whose indexed `field` (identity.iin, identity.phone,
        identity.email by default) holds `value`, looked up for `purpose` ([] if none). The
        vault normalises the value as it parses the field ("+7 701 123 45 67" finds
        "+77011234567"; emails trimmed and lower-cased); erased subjects never match. The value
        travels in the body only; it is audited as field, purpose and count, never the value.
        InvalidRequest if the field is not indexed or the value fails its check; Forbidden as
        for a read; IndexBuilding (after the retries) while the vault is still building the index."""
        body = self._call("POST", LOOKUP_PATH, {"field": field, "value": value, "purpose": purpose})
        return [str(s) for s in body["subjects"]]

    def import_subjects(self, items: Iterable[tuple[str, Mapping[str, Any]] | Mapping[str, Any]]) -> list[ImportResult]:
        """Stores many subjects, BATCH_LIMIT per request (POST /v1/subjects:batch): `items` are
        (subject, fields) pairs or {"subject", "fields"} objects, such as the lines of a JSONL
        export. Each subject is created or merged on its own, so one refusal (a bad value, a
        unique field held by another subject, even one earlier in the same batch) refuses only
        that subject: the results, in the order of `items`, say which."""
        subjects = [{"subject": i[0], "fields": dict(i[1])} if isinstance(i, tuple) else {"subject": i["subject"], "fields": dict(i["fields"])} for i in items]
        results: list[ImportResult] = []
        for start in range(0, len(subjects), BATCH_LIMIT):
            chunk = subjects[start : start + BATCH_LIMIT]
            answer = self._call("POST", "/v1/subjects:batch", {"subjects": chunk})
            for sent, r in zip(chunk, answer["results"]):
                problem = r.get("problem")
                if isinstance(problem, Mapping):
                    problem = _problem_of(problem, int(r["status"]), "")
                    if isinstance(problem, Conflict):
                        problem.field = _named_field(problem.detail, sent["fields"])
                elif problem is not None:
                    problem = QoimaError(PROBLEM_PREFIX + str(problem), int(r["status"]), "", str(problem), "")
                results.append(ImportResult(str(r["subject"]), int(r["status"]), r.get("version"), problem))
        return results

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
        key = None if method == "GET" or path == LOOKUP_PATH else f"py-{uuid.uuid4().hex}"
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
    wait = float(retry_after) if retry_after and retry_after.isdigit() else None
    return _problem_of(doc, status, request_id, wait)


def _problem_of(doc: Mapping[str, Any], status: int, request_id: str, retry_after: float | None = None) -> QoimaError:
    """The QoimaError subclass of a problem document (a whole answer, or one import result's)."""
    kind = str(doc.get("type", f"{PROBLEM_PREFIX}http-{status}"))
    cls = _BY_SLUG.get(kind[len(PROBLEM_PREFIX) :], QoimaError)
    title = str(doc.get("title", ""))
    detail = str(doc.get("detail", "the vault answered without a problem document"))
    return cls(kind, int(doc.get("status", status)), title, detail, request_id, doc.get("receipt"), retry_after)


def _named_field(detail: str, sent: Mapping[str, Any]) -> str | None:
    """The field, among those sent, that a conflict's detail names (the longest, so that a
    name is not taken for a prefix of a longer one)."""
    named = [f for f in sent if f in detail]
    return max(named, key=len) if named else None


# --- the demonstration -------------------------------------------------------------------


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"lending_client.py: set {name} (see the docstring at the top of this file)")
    return value


def _demo_iin(unlike: str = "") -> str:
    """A made-up IIN with a valid check digit (weights 1..11; if the sum mod 11 is 10, weights
    3..11,1,2; a second 10 has no check digit), different on each run: the vault keeps
    identity.iin unique among live subjects."""
    while True:
        d = [int(c) for c in f"9001013{random.randrange(10_000):04d}"]
        check = sum(a * w for a, w in zip(d, range(1, 12))) % 11
        if check == 10:
            check = sum(a * w for a, w in zip(d, [3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2])) % 11
        candidate = "".join(map(str, d)) + str(check)
        if check != 10 and candidate != unlike:
            return candidate


def main() -> int:
    url = os.environ.get("QOIMA_URL", "http://127.0.0.1:8750")
    service = QoimaClient(url, _env("QOIMA_SERVICE_TOKEN"))
    website = QoimaClient(url, os.environ["QOIMA_WEBSITE_TOKEN"]) if os.environ.get("QOIMA_WEBSITE_TOKEN") else service
    subject = os.environ.get("QOIMA_DEMO_SUBJECT") or f"demo-{uuid.uuid4().hex[:12]}"
    iin = os.environ.get("QOIMA_DEMO_IIN") or _demo_iin()
    contract = f"L-{uuid.uuid4().hex[:10]}"

    # 1. Origination looks the applicant up by IIN first (dedupe at application): nobody yet,
    #    so it stores the application (made-up data) under a new id.
    print(f"lookup before storing: {service.lookup('identity.iin', iin, 'loan_issuance')}")
    w = service.store(
        subject,
        {
            "identity.full_name": "Demo Borrower",
            "identity.iin": iin,
            "identity.birth_date": "1990-01-01",
            "identity.phone": "+77010000000",
            "identity.email": "demo@example.kz",
            "questionnaire.monthly_income": 350000,
        },
    )
    print(f"stored {w.subject}: version {w.version}, created {w.created}, missing {w.missing_mandatory}")

    # 1a. The next application from the same person finds this subject: by IIN, or by the
    #     phone number as the applicant typed it. Only subject ids are printed.
    print(f"lookup by IIN: {service.lookup('identity.iin', iin, 'loan_issuance')}")
    print(f"lookup by phone: {service.lookup('identity.phone', '+7 701 000 00 00', 'loan_issuance')}")

    # 1b. Storing the same IIN under a second id is refused (it lost a race, or skipped the
    #     lookup): look the IIN up again and reuse the subject found.
    try:
        service.store(f"{subject}-dup", {"identity.full_name": "Demo Borrower", "identity.iin": iin})
    except Conflict as e:
        print(f"second subject with the same IIN refused: {e.status} {e.slug} ({e.field})")

    # 1c. Borrowers from the lender's old system, imported in one call; each subject stands on
    #     its own: the third has the demo borrower's IIN, the fourth a bad check digit.
    imported = service.import_subjects(
        [
            (f"{subject}-imp-1", {"identity.full_name": "Imported Borrower", "identity.iin": _demo_iin(unlike=iin)}),
            (f"{subject}-imp-2", {"identity.full_name": "Imported Borrower", "identity.phone": "+77010000001"}),
            (f"{subject}-imp-3", {"identity.full_name": "Imported Borrower", "identity.iin": iin}),
            (f"{subject}-imp-4", {"identity.full_name": "Imported Borrower", "identity.iin": "900101300011"}),
        ]
    )
    refused = [f"{r.subject} {r.problem.slug}" for r in imported if r.problem is not None]
    print(f"imported: {[r.status for r in imported]}; refused: {refused}")

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

    # 9. From now on the borrower's data is gone for good, and a lookup no longer finds it.
    try:
        service.read(subject, "loan_issuance")
    except Erased as gone:
        print(f"read after erasure: {gone.status} {gone.slug}, receipt {gone.receipt}")
    print(f"lookup after erasure: {service.lookup('identity.iin', iin, 'loan_issuance')}")

    # 10. The demo's imported borrowers go too.
    for r in imported:
        if r.status in (200, 201):
            service.request_erasure(r.subject)
    print("demo complete")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except QoimaError as failure:
        sys.exit(f"lending_client.py: {failure} (request id {failure.request_id})")
