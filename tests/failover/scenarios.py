#!/usr/bin/env python3
"""Failover scenarios with three Qoima nodes over the Patroni test cluster.

Run through ./scenarios (it picks the Patroni venv's python, which has psycopg2).
See README.md beside this file, section "Scenarios with Qoima nodes".
"""
import hashlib
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER = os.path.join(HERE, "cluster")
QOIMA_BIN = os.environ.get("QOIMA_BIN", "/tmp/qoima-failover-bin/qoima")
PORTS = [28750, 28751, 28752]
NAMES = ["a", "b", "c"]
LEASE = int(os.environ.get("LEASE_SECONDS", "5"))
RESOLVE_TIMEOUT = int(os.environ.get("RESOLVE_TIMEOUT_SECONDS", "60"))
THREADS = int(os.environ.get("THREADS", "4"))
PRE_FAULT_S = float(os.environ.get("PRE_FAULT_S", "7"))
POST_RECOVERY_S = float(os.environ.get("POST_RECOVERY_S", "7"))
MAX_AFTER_FAULT_S = float(os.environ.get("MAX_AFTER_FAULT_S", "75"))
HTTP_TIMEOUT = float(os.environ.get("HTTP_TIMEOUT_S", "20"))
WRITE_RETRY_BUDGET = float(os.environ.get("WRITE_RETRY_BUDGET_S", "45"))
LOG_KEEP = os.environ.get("LOG_KEEP", "/tmp/failover-logs")
SUITE_BUDGET = float(os.environ.get("SUITE_BUDGET_S", "840"))  # 14 min: under the 15 asked

T0 = time.monotonic()


def now():
    return time.monotonic()


def log(msg):
    print("[%6.1f] %s" % (now() - T0, msg), flush=True)


class Fail(Exception):
    pass


def run(args, timeout=60, check=True):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise Fail("%s failed (%d): %s %s" % (" ".join(args), p.returncode, p.stdout.strip(), p.stderr.strip()))
    return p


def cluster(*args, timeout=60, check=True):
    return run([CLUSTER] + list(args), timeout=timeout, check=check)


# ---- IINs: 12 digits with a valid check digit (src/schema.rs iin_check_digit) -----------
def iin_check(first11):
    def s(w):
        return sum(a * b for a, b in zip(first11, w)) % 11
    c = s(range(1, 12))
    if c == 10:
        c = s([3, 4, 5, 6, 7, 8, 9, 10, 11, 1, 2])
    return None if c == 10 else c


_iin_lock = threading.Lock()
_iin_next = [random.randint(0, 40000)]


def fresh_iin():
    with _iin_lock:
        while True:
            n = _iin_next[0]
            _iin_next[0] += 1
            first = "900101" + "%05d" % (n % 100000)
            c = iin_check([int(ch) for ch in first])
            if c is not None:
                return first + str(c)


# ---- HTTP -------------------------------------------------------------------------------
class Answer:
    def __init__(self, status, body, headers, node, err=None, t_sent=0.0, t_done=0.0):
        self.status, self.body, self.headers, self.node, self.err = status, body, headers, node, err
        self.t_sent, self.t_done = t_sent, t_done

    @property
    def slug(self):
        if isinstance(self.body, dict):
            t = self.body.get("type", "")
            if t.startswith("urn:qoima:problem:"):
                return t[len("urn:qoima:problem:"):]
        return None

    def ok(self):
        return self.status is not None and 200 <= self.status < 300

    def __repr__(self):
        return "<%s %s %s>" % (self.node, self.status if self.status else self.err, self.slug or "")


def req(port, method, path, token=None, body=None, idem=None, timeout=HTTP_TIMEOUT):
    t_sent = now()
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + token
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if idem:
        headers["Idempotency-Key"] = idem
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        raw = r.read()
        try:
            b = json.loads(raw) if raw else None
        except ValueError:
            b = raw.decode(errors="replace")
        a = Answer(r.status, b, dict(r.getheaders()), port, None, t_sent, now())
    except Exception as e:  # connection refused/reset, timeout: outcome unknown for a write
        a = Answer(None, None, {}, port, "%s: %s" % (type(e).__name__, e), t_sent, now())
    finally:
        c.close()
    a.method, a.path = method, path
    return a


# ---- the Qoima nodes and their supervisor -------------------------------------------------
class Node:
    def __init__(self, idx, base):
        self.idx, self.name, self.port = idx, NAMES[idx], PORTS[idx]
        self.dir = os.path.join(base, "node-" + self.name)
        self.config = os.path.join(self.dir, "qoima.toml")
        self.logfile = os.path.join(self.dir, "qoima.log")
        self.proc = None
        self.exits = []   # (monotonic time, returncode)
        self.starts = []  # monotonic times
        self.supervised = True
        self.lock = threading.Lock()

    def start(self):
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            lf = open(self.logfile, "ab")
            lf.write(("\n==== driver: start at +%.1f s ====\n" % (now() - T0)).encode())
            lf.flush()
            self.proc = subprocess.Popen([QOIMA_BIN, "serve", "--config", self.config], stdout=lf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
            lf.close()
            self.starts.append(now())

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout=10):
        with self.lock:
            if not self.alive():
                return
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass

    def is_stopped(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                return any(l.startswith("State:") and "T" in l.split()[1] for l in f)
        except Exception:
            return False


class Supervisor(threading.Thread):
    """Restarts a node that exited (systemd Restart=always, RestartSec=1)."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes, self.stop_ev = nodes, threading.Event()

    def run(self):
        while not self.stop_ev.wait(0.25):
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    with n.lock:
                        if n.proc is None or n.proc.poll() is None:
                            continue
                        rc = n.proc.returncode
                        n.exits.append((now(), rc))
                        n.proc = None
                    log("supervisor: node %s exited (rc %s)" % (n.name, rc))
                    if n.supervised:
                        time.sleep(1)
                        n.start()
                        log("supervisor: node %s restarted" % n.name)


# ---- the suite ---------------------------------------------------------------------------
class Suite:
    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="qoima-scenarios.")
        os.chmod(self.base, 0o755)  # the cluster dir inside must be reachable by postgres
        self.pgdir = os.path.join(self.base, "pg")
        self.qdir = os.path.join(self.base, "q")
        os.makedirs(self.qdir)
        self.connstr = None
        self.nodes = [Node(i, self.qdir) for i in range(3)]
        self.sup = None
        self.tok = {k: secrets.token_hex(16) for k in ("svc", "auditor", "web")}
        self.deks_all = {}  # subject -> wrapped DEK bytes, every acknowledged erasure of the suite

    # -- setup
    def write_configs(self):
        key = os.path.join(self.qdir, "root.key")
        with open(key, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        os.chmod(key, 0o600)
        h = {k: hashlib.sha256(v.encode()).hexdigest() for k, v in self.tok.items()}
        for n in self.nodes:
            os.makedirs(os.path.join(n.dir, "data"), exist_ok=True)
            with open(n.config, "w") as f:
                f.write("""listen = "127.0.0.1:%(port)d"
data_dir = "%(dir)s/data"

[root_key]
file = "%(key)s"

[[callers]]
name = "svc"
token_sha256 = "%(svc)s"
roles = ["service"]
purposes = ["loan_issuance", "loan_monitoring", "advertising"]
writes = ["identity.*", "questionnaire.*", "contract.*", "technical.*"]

[[callers]]
name = "auditor"
token_sha256 = "%(auditor)s"
roles = ["auditor"]
purposes = []

[[callers]]
name = "web"
token_sha256 = "%(web)s"
roles = ["website"]
purposes = []

[storage]
engine = "postgres"

[storage.postgres]
url = "%(url)s connect_timeout=2"
schema = "qoima"
lease_seconds = %(lease)d
advertise_url = "http://127.0.0.1:%(port)d"
resolve_timeout_seconds = %(resolve)d
""" % dict(port=n.port, dir=n.dir, key=key, url=self.connstr, lease=LEASE, resolve=RESOLVE_TIMEOUT, **h))

    def setup(self):
        if not os.access(QOIMA_BIN, os.X_OK):
            raise Fail("no Qoima binary at %s (set QOIMA_BIN)" % QOIMA_BIN)
        for p in PORTS:
            if subprocess.run(["ss", "-Hltn", "sport = :%d" % p], stdout=subprocess.PIPE, text=True).stdout.strip():
                raise Fail("port %d is in use" % p)
        log("cluster install")
        cluster("install", timeout=300)
        log("cluster up %s" % self.pgdir)
        out = cluster("up", self.pgdir, timeout=300).stdout.strip().splitlines()
        self.connstr = out[-1].strip()
        log("cluster: %s" % self.connstr)
        self.write_configs()
        p = run([QOIMA_BIN, "config", "check", self.nodes[0].config], timeout=60, check=False)
        log("qoima config check: rc %d: %s" % (p.returncode, (p.stdout + p.stderr).strip().replace("\n", " | ")[:600]))
        if p.returncode != 0:
            raise Fail("qoima config check failed")
        self.nodes[0].start()
        self.wait_active(60)  # the first one creates the schema and takes the lease
        for n in self.nodes[1:]:
            n.start()
        self.sup = Supervisor(self.nodes)
        self.sup.start()
        self.wait_ready_set(60)

    # -- node states
    def readyz(self, n, timeout=2):
        return req(n.port, "GET", "/readyz", timeout=timeout).status

    def healthz(self, n, timeout=2):
        return req(n.port, "GET", "/healthz", timeout=timeout).status

    def active_nodes(self):
        return [n for n in self.nodes if n.alive() and not n.is_stopped() and self.readyz(n) == 200]

    def wait_active(self, timeout, exclude=None):
        t = now()
        while now() - t < timeout:
            a = [n for n in self.active_nodes() if n is not exclude]
            if len(a) == 1:
                return a[0]
            time.sleep(0.3)
        raise Fail("no single active Qoima node after %d s (readyz: %s)" % (
            timeout, {n.name: (self.readyz(n) if n.alive() else "dead") for n in self.nodes}))

    def wait_ready_set(self, timeout):
        """Exactly one node /readyz 200, the others /healthz 200."""
        t = now()
        while now() - t < timeout:
            r = {n.name: (self.readyz(n), self.healthz(n)) for n in self.nodes}
            act = [k for k, v in r.items() if v[0] == 200]
            if len(act) == 1 and all(v[1] == 200 for v in r.values()):
                return [n for n in self.nodes if n.name == act[0]][0]
            time.sleep(0.5)
        raise Fail("nodes not 1 active + 2 standing by after %d s: %s" % (timeout, r))

    # -- PostgreSQL
    def pg(self):
        c = psycopg2.connect(self.connstr + " connect_timeout=2")
        c.autocommit = True
        return c

    def dek_of(self, subject):
        c = self.pg()
        try:
            with c.cursor() as cur:
                cur.execute("SELECT v FROM qoima.subjects WHERE k = %s", (subject.encode(),))
                row = cur.fetchone()
        finally:
            c.close()
        if not row:
            return None
        v = bytes(row[0])
        ln = int.from_bytes(v[1:3], "big")
        return v[3:3 + ln]

    def audit_sql_check(self):
        c = self.pg()
        try:
            with c.cursor() as cur:
                cur.execute("SELECT k FROM qoima.audit ORDER BY k")
                ks = [bytes(r[0]) for r in cur.fetchall()]
        finally:
            c.close()
        bad = [k for k in ks if len(k) != 8]
        seqs = [int.from_bytes(k, "big") for k in ks if len(k) == 8]
        dup = len(seqs) - len(set(seqs))
        gaps = []
        for a, b in zip(seqs, seqs[1:]):
            if b != a + 1:
                gaps.append((a, b))
        ok = not bad and dup == 0 and not gaps
        return ok, "%d entries, seq %s..%s, %d duplicate, gaps %s%s" % (
            len(seqs), seqs[0] if seqs else "-", seqs[-1] if seqs else "-", dup, gaps[:5],
            ", %d keys not 8 bytes" % len(bad) if bad else "")

    def scan(self, deks):
        """{subject: [files holding its wrapped DEK]}. grep -F (Aho-Corasick-like, one pass
        whatever the number of DEKs) finds candidate files by a 16-byte piece of each DEK
        without newline or NUL; each candidate is then checked for the whole DEKs."""
        items = [(s, d) for s, d in deks.items() if d]
        if not items:
            return {}
        pats = []
        for _, d in items:
            piece = None
            for i in range(0, max(1, len(d) - 15)):
                w = d[i:i + 16]
                if b"\n" not in w and b"\0" not in w:
                    piece = w
                    break
            pats.append(piece or d[:16].replace(b"\n", b"").replace(b"\0", b"") or d)
        dirs = cluster("data-dirs", self.pgdir).stdout.split()
        dirs += [os.path.join(n.dir, "data") for n in self.nodes]
        dirs = [d for d in dirs if os.path.isdir(d)]
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(b"\n".join(pats) + b"\n")
            pf = f.name
        try:
            p = subprocess.run(["grep", "-rlFa", "--no-messages", "-f", pf, "--"] + dirs, stdout=subprocess.PIPE,
                               env=dict(os.environ, LC_ALL="C"), timeout=300)
        finally:
            os.unlink(pf)
        if p.returncode not in (0, 1):
            raise Fail("grep over the data dirs failed (rc %d)" % p.returncode)
        found = {}
        for path in p.stdout.decode(errors="surrogateescape").splitlines():
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            for s, d in items:
                if d in data:
                    found.setdefault(s, []).append(path)
        return found

    # -- recovery between scenarios
    def heal(self, timeout=150):
        """Every Patroni node running and streaming, every Qoima node up, one active."""
        t = now()
        for nd in ("n1", "n2", "n3"):
            cluster("cont-node", self.pgdir, nd, check=False)
        for nd in ("n1", "n2", "n3"):
            if cluster("patroni-pid", self.pgdir, nd, check=False).returncode != 0:
                log("heal: restart-node %s" % nd)
                cluster("restart-node", self.pgdir, nd, check=False)
        left = max(10, timeout - (now() - t))
        p = cluster("wait-streaming", self.pgdir, "2", str(int(left)), timeout=left + 10, check=False)
        if p.returncode != 0:
            raise Fail("cluster not healthy again: %s %s" % (p.stderr.strip(), cluster("status", self.pgdir, check=False).stdout))
        for n in self.nodes:
            n.supervised = True
            if n.alive() and n.is_stopped():
                n.signal(signal.SIGCONT)
            if not n.alive():
                n.start()
        return self.wait_ready_set(max(20, timeout - (now() - t)))

    def keep_logs(self, scen):
        d = os.path.join(LOG_KEEP, scen)
        os.makedirs(d, exist_ok=True)
        for n in self.nodes:
            try:
                shutil.copy(n.logfile, os.path.join(d, "qoima-%s.log" % n.name))
            except OSError:
                pass
        for nd in ("n1", "n2", "n3"):
            try:
                shutil.copy(os.path.join(self.pgdir, "log", nd + ".patroni.log"), os.path.join(d, nd + ".patroni.log"))
            except OSError:
                pass
        return d

    def teardown(self):
        if self.sup:
            self.sup.stop_ev.set()
        for n in self.nodes:
            n.supervised = False
        for n in self.nodes:
            try:
                n.stop()
            except Exception as e:
                log("stop %s: %s" % (n.name, e))
        if self.connstr is not None or os.path.exists(self.pgdir):
            p = cluster("down", self.pgdir, "--wipe", timeout=180, check=False)
            log("cluster down: %s" % (p.stdout.strip() or p.stderr.strip()))
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            log("kept %s" % self.base)


# ---- the load ------------------------------------------------------------------------------
class Write:
    """One logical write and every attempt at it."""

    def __init__(self, kind, subject, value=None):
        self.kind, self.subject, self.value = kind, subject, value
        self.key = str(uuid.uuid4())
        self.attempts = []
        self.state = None  # "acked" | "nack" (definitely not done) | "unknown"
        self.t_ack = None
        self.t_first_sent = None


class Subject:
    def __init__(self, sid, name, iin):
        self.sid = sid
        self.history = []  # [(full_name, state)] in order, the create first
        self.created = None  # Write
        self.dek = None
        self.erasure = None  # Write
        self.consent = None  # Write
        self.iin = iin


class Load:
    def __init__(self, suite, scen):
        self.s, self.scen = suite, scen
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.subjects = []
        self.writes = []
        self.reads = {"ok": 0, "fail": 0}
        self.read_answers = []
        self.rr = [random.randint(0, 2)]
        self.t_fault = None
        self.first_write_after = None
        self.errors = {}
        self.threads = []
        self.seq = 0
        self.by_node_after = {}  # port -> [Answer] for answers received after a mark
        self.mark = None

    def port(self):
        with self.lock:
            self.rr[0] += 1
            return PORTS[self.rr[0] % 3]

    def note(self, a):
        k = "%s %s" % (a.status or "conn-error", a.slug or (a.err.split(":")[0] if a.err else ""))
        with self.lock:
            self.errors[k] = self.errors.get(k, 0) + 1
            if self.mark is not None and a.t_done >= self.mark:
                self.by_node_after.setdefault(a.node, []).append(a)

    def do_write(self, w, method, path, body):
        """Send, retrying with the same Idempotency-Key while the outcome is open."""
        tok = self.s.tok["svc"]
        t0 = now()
        w.t_first_sent = t0
        ambiguous = False
        while True:
            a = req(self.port(), method, path, tok, body, idem=w.key)
            w.attempts.append(a)
            self.note(a)
            if a.ok():
                w.state = "acked"
                w.t_ack = a.t_done
                with self.lock:
                    if self.t_fault is not None and a.t_sent >= self.t_fault and self.first_write_after is None:
                        self.first_write_after = a.t_done
                return a
            if a.status is not None and 400 <= a.status < 500 and a.slug != "idempotency-key-in-flight" and a.status not in (408,):
                w.state = "unknown" if ambiguous else "nack"
                return a
            # 503 standby/unavailable: nothing done by this attempt; outcome-unknown, 408,
            # connection errors and timeouts: maybe done -> retry with the same key.
            if a.status is None or a.slug == "outcome-unknown" or a.status == 408 or (a.status >= 500 and a.slug not in ("standby", "unavailable")):
                ambiguous = True
            if self.stop_ev.is_set() and now() - t0 > 5 or now() - t0 > WRITE_RETRY_BUDGET:
                w.state = "unknown" if ambiguous else "nack"
                return a
            ra = a.headers.get("Retry-After") or a.headers.get("retry-after")
            try:
                d = min(1.0, float(ra)) if ra else 0.3
            except ValueError:
                d = 0.3
            time.sleep(d)

    def create(self, tid):
        with self.lock:
            self.seq += 1
            sid = "%s-t%d-%d" % (self.scen, tid, self.seq)
        name = "Name %s" % secrets.token_hex(4)
        subj = Subject(sid, name, fresh_iin())
        w = Write("create", sid, name)
        body = {"fields": {"identity.full_name": name, "identity.iin": subj.iin, "identity.phone": "+7701%07d" % random.randint(0, 9999999),
                           "identity.birth_date": "1990-01-01", "questionnaire.monthly_income": 350000}}
        self.do_write(w, "PUT", "/v1/subjects/" + sid, body)
        subj.created = w
        subj.history.append((name, w.state))
        with self.lock:
            self.writes.append(w)
            self.subjects.append(subj)
        if w.state == "acked":
            try:
                subj.dek = self.s.dek_of(sid)
            except Exception:
                pass  # during the fault; retried before an erasure
        return subj

    def update(self, subj):
        name = "Name %s" % secrets.token_hex(4)
        w = Write("update", subj.sid, name)
        self.do_write(w, "PUT", "/v1/subjects/" + subj.sid, {"fields": {"identity.full_name": name}})
        subj.history.append((name, w.state))
        with self.lock:
            self.writes.append(w)

    def consent(self, subj):
        w = Write("consent", subj.sid, "advertising")
        self.do_write(w, "POST", "/v1/subjects/%s/consents" % subj.sid, {"purpose": "advertising"})
        if subj.consent is None or subj.consent.state != "acked":
            subj.consent = w
        with self.lock:
            self.writes.append(w)

    def erase(self, subj):
        if subj.dek is None:
            try:
                subj.dek = self.s.dek_of(subj.sid)
            except Exception:
                return False
            if subj.dek is None:
                return False
        w = Write("erasure", subj.sid)
        self.do_write(w, "POST", "/v1/subjects/%s/erasure" % subj.sid, {})
        subj.erasure = w
        with self.lock:
            self.writes.append(w)
        return True

    def read(self, subj):
        a = req(self.port(), "GET", "/v1/subjects/%s?purpose=loan_issuance" % subj.sid, self.s.tok["svc"])
        self.note(a)
        with self.lock:
            self.reads["ok" if a.ok() else "fail"] += 1
            self.read_answers.append(a)

    def worker(self, tid):
        mine = []
        rnd = random.Random(tid * 7919 + int(time.time()))
        while not self.stop_ev.is_set():
            live = [x for x in mine if x.erasure is None and x.created.state == "acked"
                    and all(st != "unknown" for _, st in x.history)]
            r = rnd.random()
            try:
                if r < 0.30 or len(live) < 3:
                    mine.append(self.create(tid))
                elif r < 0.60:
                    self.update(rnd.choice(live))
                elif r < 0.70:
                    self.consent(rnd.choice(live))
                elif r < 0.96:
                    self.read(rnd.choice(live))
                elif len(live) > 6:
                    self.erase(rnd.choice(live))
            except Exception as e:
                log("worker %d: %s" % (tid, traceback.format_exc()))
                time.sleep(0.5)

    def start(self):
        for i in range(THREADS):
            t = threading.Thread(target=self.worker, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self, timeout=120):
        self.stop_ev.set()
        t = now()
        for th in self.threads:
            th.join(max(1, timeout - (now() - t)))
        alive = [th for th in self.threads if th.is_alive()]
        if alive:
            raise Fail("%d load threads still running after %d s" % (len(alive), timeout))

    def run_until_recovered(self):
        """After the fault: until a write sent after the fault was acknowledged, plus a
        little more load, or MAX_AFTER_FAULT_S."""
        while now() - self.t_fault < MAX_AFTER_FAULT_S:
            if self.first_write_after is not None and now() - self.first_write_after >= POST_RECOVERY_S:
                return True
            time.sleep(0.2)
        return self.first_write_after is not None


# ---- checks after a scenario -------------------------------------------------------------
def verify(suite, load, res):
    tok = suite.tok["svc"]
    lost, phantom, notes = [], [], []
    acked_w = [w for w in load.writes if w.state == "acked"]
    res["writes_acked"] = len([w for w in acked_w if w.kind != "erasure"])
    res["erasures_acked"] = len([w for w in acked_w if w.kind == "erasure"])
    res["unknown"] = len([w for w in load.writes if w.state == "unknown"])
    res["nack"] = len([w for w in load.writes if w.state == "nack"])

    def get(path, token=tok):
        for _ in range(20):
            a = req(PORTS[random.randint(0, 2)], "GET", path, token)
            if a.status is not None and a.status < 500:
                return a
            time.sleep(0.5)
        return a

    erased = []
    for subj in load.subjects:
        cw = subj.created
        a = get("/v1/subjects/%s?purpose=loan_issuance" % subj.sid)
        er = subj.erasure
        if er is not None and er.state == "acked":
            if a.status != 410:
                lost.append("%s: erasure acknowledged (%s) but read answers %s %s" % (subj.sid, er.attempts[-1].body, a.status, a.body))
            erased.append(subj)
            continue
        if er is not None and er.state == "unknown" and a.status == 410:
            continue
        if er is not None and er.state == "nack" and a.status == 410:
            phantom.append("%s: erasure answered not-done (%s) but the subject is erased" % (subj.sid, [x.status for x in er.attempts]))
            continue
        if cw.state != "acked":
            if a.status == 200 and cw.state == "nack":
                phantom.append("%s: create answered not-done (%s) but it exists" % (subj.sid, [(x.status, x.slug) for x in cw.attempts]))
            continue
        if a.status != 200:
            lost.append("%s: create acknowledged, read answers %s %s" % (subj.sid, a.status, a.body))
            continue
        val = (a.body.get("fields") or {}).get("identity.full_name")
        hist = subj.history
        last_ack = max(i for i, (_, st) in enumerate(hist) if st == "acked")
        idx = [i for i, (v, _) in enumerate(hist) if v == val]
        if not idx:
            lost.append("%s: read full_name %r, never written" % (subj.sid, val))
        elif idx[0] < last_ack:
            lost.append("%s: read %r (write #%d) but write #%d %r was acknowledged; history %s" % (
                subj.sid, val, idx[0], last_ack, hist[last_ack][0], [st for _, st in hist]))
        elif idx[0] > last_ack and hist[idx[0]][1] == "nack":
            phantom.append("%s: read %r from write #%d answered not-done" % (subj.sid, val, idx[0]))
        if subj.consent is not None and subj.consent.state == "acked":
            b = get("/v1/subjects/%s?purpose=advertising" % subj.sid)
            if b.status != 200:
                lost.append("%s: consent acknowledged, advertising read answers %s %s" % (subj.sid, b.status, b.slug))
    res["lost"] = len(lost)
    res["phantom"] = len(phantom)
    res["lost_detail"] = lost
    res["phantom_detail"] = phantom

    # erasures: purge done, then no file holds any erased subject's wrapped DEK
    deks = {s.sid: s.dek for s in erased if s.dek}
    suite.deks_all.update(deks)
    t = now()
    for s in erased:
        while now() - t < 60:
            a = get("/v1/subjects/%s/erasure" % s.sid)
            if a.status == 200 and isinstance(a.body, dict) and not a.body.get("purge_pending"):
                break
            time.sleep(1)
        else:
            notes.append("%s: purge still pending after 60 s" % s.sid)
    # One `cluster checkpoint-all` (as the vault's purge does: switch WAL + CHECKPOINT on
    # the primary, then restartpoints), then scan; while found, scan again for up to 60 s
    # with no further WAL switches (the vault retries purges itself). If still found, a
    # diagnosis only (no effect on the verdict): 9 more checkpoint-alls, scan again.
    found = {}
    t = now()
    rounds = 0
    cluster("checkpoint-all", suite.pgdir, check=False)
    time.sleep(1)
    todo = dict(suite.deks_all)
    while True:
        rounds += 1
        ts = now()
        found = suite.scan(todo)
        todo = {k: v for k, v in todo.items() if k in found}  # a rescan looks for those still found
        log("scan %d: %d DEKs, %d found, %.1f s" % (rounds, len(suite.deks_all), len(found), now() - ts))
        if not found or now() - t > 60:
            break
        time.sleep(5)
    if found:
        for _ in range(9):
            cluster("checkpoint-all", suite.pgdir, check=False)
        time.sleep(1)
        again = suite.scan(todo)
        notes.append("diagnosis: after 9 more checkpoint-all (switch WAL + CHECKPOINT), %d of the %d DEKs still in files" % (
            len(again), len(found)))
        log(notes[-1])
    try:
        c = suite.pg()
        with c.cursor() as cur:
            cur.execute("SELECT current_setting('wal_keep_size'), current_setting('wal_recycle')")
            notes.append("wal_keep_size %s, wal_recycle %s; %d scan round(s)" % (cur.fetchone() + (rounds,)))
        c.close()
    except Exception as e:
        notes.append("settings: %s" % e)
    res["deks_found"] = len(found)
    res["deks_detail"] = {k: v for k, v in found.items()}
    res["deks_checked"] = len(suite.deks_all)

    # audit: the CLI, the API, and the table
    p = run([QOIMA_BIN, "audit", "verify", "--config", suite.nodes[0].config], timeout=120, check=False)
    cli_ok = p.returncode == 0
    api = get("/v1/audit/verify", suite.tok["auditor"])
    api_ok = api.status == 200 and isinstance(api.body, dict) and api.body.get("ok") is True
    sql_ok, sql_msg = suite.audit_sql_check()
    res["audit_ok"] = cli_ok and api_ok and sql_ok
    res["audit_detail"] = "cli rc %d: %s; api %s %s; sql: %s" % (
        p.returncode, (p.stdout + p.stderr).strip()[:300], api.status,
        {k: api.body.get(k) for k in ("ok", "entries", "first_broken")} if isinstance(api.body, dict) else api.body, sql_msg)
    res["notes"] += notes


# ---- scenarios -----------------------------------------------------------------------------
def scen_pg_fault(suite, load, res, sig):
    out = cluster("kill-primary", suite.pgdir, sig).stdout.strip()
    load.t_fault = now()
    old = out.split()[0]
    log("fault: kill-primary %s: %s" % (sig, out))
    w = cluster("wait-leader", suite.pgdir, "90", timeout=100, check=False)
    res["notes"].append("wait-leader %s s" % (w.stdout.strip() or w.stderr.strip()))
    log("wait-leader: %s" % (w.stdout.strip() or w.stderr.strip()))
    if sig == "STOP":
        cluster("cont-node", suite.pgdir, old, check=False)
        log("cont-node %s" % old)
    load.run_until_recovered()
    return old


def scen_kill9_pg_primary(suite, load, res):
    scen_pg_fault(suite, load, res, "KILL")


def scen_stop_pg_primary(suite, load, res):
    scen_pg_fault(suite, load, res, "STOP")


def scen_kill9_active_qoima(suite, load, res):
    act = suite.wait_active(10)
    act.signal(signal.SIGKILL)
    load.t_fault = now()
    log("fault: SIGKILL active node %s (pid %s); the supervisor restarts it" % (act.name, act.proc.pid if act.proc else "?"))
    t = now()
    try:
        new = suite.wait_active(60)
        res["notes"].append("node %s active %.1f s after the kill" % (new.name, now() - t))
    except Fail as e:
        res["notes"].append(str(e))
    load.run_until_recovered()


def scen_stop_active_qoima(suite, load, res):
    act = suite.wait_active(10)
    act.supervised = True
    n_exits = len(act.exits)
    # Before the signal: a request sent from here on counts as sent to a stopped node.
    load.t_fault = now()
    act.signal(signal.SIGSTOP)
    log("fault: SIGSTOP active node %s for %d s" % (act.name, LEASE + 5))
    t = now()
    new = None
    # While nobody serves: the lease row and the qoima sessions that are not idle, once a
    # second (evidence for how long the takeover takes, and what it waits for).
    snaps = []

    def snapshot():
        try:
            c = suite.pg()
            with c.cursor() as cur:
                cur.execute("SELECT epoch, holder, expires_at - now() FROM qoima.qoima_lease")
                lease = cur.fetchall()
                cur.execute("SELECT pid, state, wait_event_type, wait_event, round(extract(epoch FROM now() - xact_start)::numeric, 1), "
                            "left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM pg_stat_activity "
                            "WHERE application_name = 'qoima' AND state <> 'idle' ORDER BY xact_start")
                acts = cur.fetchall()
            c.close()
            snaps.append("+%.1f s lease %s\n%s" % (now() - t, lease, "\n".join("    %s" % (r,) for r in acts)))
        except Exception as e:
            snaps.append("+%.1f s: %s" % (now() - t, e))
    next_snap = now()
    while now() - t < 60:
        if now() >= next_snap:
            snapshot()
            next_snap = now() + 1
        a = [n for n in suite.nodes if n is not act and n.alive() and suite.readyz(n, timeout=1) == 200]
        if a:
            new = a[0]
            break
        time.sleep(0.2)
    res["notes"].append("takeover (another node /readyz 200) by %s after %.1f s" % (new.name if new else "nobody", now() - t))
    os.makedirs(os.path.join(LOG_KEEP, load.scen), exist_ok=True)
    with open(os.path.join(LOG_KEEP, load.scen, "pg-activity-during-takeover.txt"), "w") as f:
        f.write("\n".join(snaps) + "\n")
    time.sleep(max(0, (LEASE + 5) - (now() - t)))
    load.mark = now()
    pid = act.proc.pid if act.proc else None
    act.signal(signal.SIGCONT)
    t_cont = now()
    log("SIGCONT node %s after %.1f s stopped" % (act.name, t_cont - load.t_fault))
    exited = None
    while now() - t_cont < 15:
        if len(act.exits) > n_exits or not act.alive() or (act.proc and act.proc.pid != pid):
            exited = now() - t_cont
            break
        time.sleep(0.1)
    if exited is None and act.proc is not None and act.exits[n_exits:] == [] and act.alive() and act.proc.pid == pid:
        res["notes"].append("woken node %s did NOT exit within 15 s (readyz %s)" % (act.name, suite.readyz(act)))
        res["fenced_exit"] = False
    else:
        t_rc = now()
        while len(act.exits) <= n_exits and now() - t_rc < 2:  # the supervisor records it
            time.sleep(0.05)
        rc = act.exits[n_exits][1] if len(act.exits) > n_exits else "?"
        res["notes"].append("woken node %s exited by itself %.1f s after SIGCONT (rc %s)" % (act.name, exited or 0, rc))
        res["fenced_exit"] = True
    load.run_until_recovered()
    # Answers the woken node gave after SIGCONT (before it exited): any 2xx write must be
    # durable (checked with everything else); count them.
    with load.lock:
        ans = [a for a in load.by_node_after.get(act.port, []) if a.t_done <= t_cont + (exited or 15)]
    # 2xx from the woken (fenced) node for a request sent while it was stopped or after: a
    # write it acknowledged (other than the replay of an answer another node gave,
    # Idempotent-Replayed), or a read that released plaintext, would mean it committed (or
    # skipped) an audit entry after its lease was taken. A request sent before the SIGSTOP may
    # have committed before it, under the lease, and be answered on waking (its durability is
    # checked with every other acknowledged write); those are counted apart.
    def fresh(a):
        return a.t_sent >= load.t_fault
    early = [a for a in ans if a.ok() and not fresh(a)]
    res["notes"].append("2xx on waking for requests sent before the SIGSTOP (committed under the lease): %d" % len(early))
    bad = [a for a in ans if a.ok() and fresh(a) and a.path.startswith("/v1/subjects/")
           and (a.headers.get("Idempotent-Replayed") or a.headers.get("idempotent-replayed")) != "true"]
    res["notes"].append("woken node answered %d requests after SIGCONT before exiting: %s; 2xx among them (not replays): %d %s" % (
        len(ans), sorted(set("%s %s" % (a.status or a.err.split(':')[0], a.slug or "") for a in ans)), len(bad),
        [(a.method, a.path, a.status) for a in bad[:5]]))
    res["woken_acks"] = len(bad)
    try:
        with open(act.logfile, errors="replace") as f:
            lines = [l.strip() for l in f if "fenced" in l.lower() or "writes nothing more" in l or "lease" in l.lower()]
        res["notes"].append("node %s log (lease/fence lines, last 4): %s" % (act.name, lines[-4:]))
    except OSError:
        pass


def scen_cancel_commit_wait(suite, load, res):
    prim = cluster("primary", suite.pgdir).stdout.split()
    pnode, pport = prim[0], int(prim[1])
    standbys = [n for n in ("n1", "n2", "n3") if n != pnode]
    cancelled = 0
    rounds = 3
    windows = []  # (both standbys frozen since, until)
    load.t_fault = now()
    for r in range(rounds):
        for sb in standbys:
            cluster("stop-node", suite.pgdir, sb)
        t = now()
        if r == 0:  # the fault: both standbys frozen; a write sent from now on must wait
            with load.lock:
                load.t_fault, load.first_write_after = t, None
        log("round %d: standbys %s stopped" % (r + 1, standbys))
        while now() - t < 2.5:
            try:
                c = psycopg2.connect("host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=2" % pport)
                c.autocommit = True
                with c.cursor() as cur:
                    cur.execute("SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity "
                                "WHERE application_name = 'qoima' AND wait_event = 'SyncRep'")
                    cancelled += cur.fetchone()[0]
                c.close()
            except Exception as e:
                log("cancel: %s" % e)
            time.sleep(0.3)
        windows.append((t, now()))
        for sb in standbys:
            cluster("cont-node", suite.pgdir, sb)
        log("round %d: standbys continued; %d waits cancelled so far" % (r + 1, cancelled))
        time.sleep(3)
    res["notes"].append("%d SyncRep waits of qoima backends cancelled over %d rounds" % (cancelled, rounds))
    load.run_until_recovered()
    # No 2xx may arrive while both standbys are frozen (0.5 s after the freeze, for answers
    # already on their way): a write then, or a read (its audit entry is a write), would have
    # been acknowledged with no standby holding it.
    bad = []
    for w in load.writes:
        for a in w.attempts:
            if a.ok() and any(t0 + 0.5 <= a.t_done <= t1 for t0, t1 in windows):
                bad.append("%s %s %s answered %d at +%.2f s into a freeze" % (w.kind, w.subject, a.path, a.status,
                           min(a.t_done - t0 for t0, t1 in windows if t0 <= a.t_done)))
    for a in load.read_answers:
        if a.ok() and any(t0 + 0.5 <= a.t_done <= t1 for t0, t1 in windows):
            bad.append("read %s answered %d in a freeze" % (a.path, a.status))
    res["acked_in_freeze"] = len(bad)
    res["notes"].append("2xx writes answered while both standbys were frozen: %d %s" % (len(bad), bad[:5]))


SCENARIOS = [
    ("kill9-pg-primary", scen_kill9_pg_primary),
    ("stop-pg-primary", scen_stop_pg_primary),
    ("kill9-active-qoima", scen_kill9_active_qoima),
    ("stop-active-qoima", scen_stop_active_qoima),
    ("cancel-commit-wait", scen_cancel_commit_wait),
]


def run_scenario(suite, name, fn):
    res = {"name": name, "notes": [], "pass": False, "error": None}
    load = Load(suite, name)
    shutil.rmtree(os.path.join(LOG_KEEP, name), ignore_errors=True)
    t_start = now()
    try:
        suite.heal()
        log("=== %s: load for %.0f s, then the fault" % (name, PRE_FAULT_S))
        load.start()
        time.sleep(PRE_FAULT_S)
        fn(suite, load, res)
        load.stop()
        res["first_write_s"] = (load.first_write_after - load.t_fault) if load.first_write_after and load.t_fault else None
        log("%s: load stopped; answers: %s" % (name, dict(sorted(load.errors.items()))))
        res["answers"] = dict(sorted(load.errors.items()))
        res["reads"] = dict(load.reads)
        suite.heal()
        verify(suite, load, res)
        res["pass"] = (res["lost"] == 0 and res["deks_found"] == 0 and res["audit_ok"] and res["phantom"] == 0
                       and res.get("first_write_s") is not None and res.get("fenced_exit", True) and res.get("woken_acks", 0) == 0
                       and res.get("acked_in_freeze", 0) == 0
                       and res["writes_acked"] > 0)
    except Exception as e:
        res["error"] = "%s: %s" % (type(e).__name__, e)
        log("%s: ERROR %s\n%s" % (name, e, traceback.format_exc()))
        load.stop_ev.set()
        for th in load.threads:
            th.join(30)
    res["seconds"] = now() - t_start
    res["logs"] = suite.keep_logs(name)
    log("%s: %s" % (name, json.dumps({k: v for k, v in res.items() if k not in ("answers",)}, default=str)))
    return res


def table(results):
    hdr = ["scenario", "writes acked", "lost", "erasures acked", "DEKs found", "audit ok", "s to 1st write", "pass"]
    rows = []
    for r in results:
        fw = r.get("first_write_s")
        rows.append([r["name"], str(r.get("writes_acked", "-")), str(r.get("lost", "-")), str(r.get("erasures_acked", "-")),
                     "%s/%s" % (r.get("deks_found", "-"), r.get("deks_checked", "-")), str(r.get("audit_ok", "-")),
                     "%.1f" % fw if fw is not None else "-", "PASS" if r["pass"] else "FAIL"])
    w = [max(len(x[i]) for x in rows + [hdr]) for i in range(len(hdr))]
    line = lambda xs: "| " + " | ".join(x.ljust(w[i]) for i, x in enumerate(xs)) + " |"
    out = [line(hdr), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(x) for x in rows]
    return "\n".join(out)


def main(argv):
    names = argv[1:] or [n for n, _ in SCENARIOS]
    known = dict(SCENARIOS)
    for n in names:
        if n not in known:
            print("unknown scenario %s (known: %s)" % (n, ", ".join(known)), file=sys.stderr)
            return 2
    suite = Suite()

    def on_alarm(*_):
        raise Fail("suite budget of %d s exceeded" % SUITE_BUDGET)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(SUITE_BUDGET))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(Fail("SIGTERM")))
    results = []
    try:
        suite.setup()
        for n in names:
            results.append(run_scenario(suite, n, known[n]))
    except BaseException as e:
        log("suite: %s: %s" % (type(e).__name__, e))
        results.append({"name": "setup/suite", "pass": False, "error": str(e), "notes": []})
    finally:
        signal.alarm(0)
        try:
            suite.teardown()
        except Exception as e:
            log("teardown: %s" % e)
    print()
    print(table(results))
    for r in results:
        extra = []
        if r.get("error"):
            extra.append("error: " + r["error"])
        for k in ("lost_detail", "phantom_detail"):
            for d in r.get(k) or []:
                extra.append(k.split("_")[0] + ": " + d)
        for s, files in (r.get("deks_detail") or {}).items():
            extra.append("DEK of %s found in %s" % (s, files[:6]))
        if r.get("audit_ok") is False:
            extra.append("audit: " + r.get("audit_detail", ""))
        print("\n%s: %s; unknown-outcome writes %s, not-done %s, phantom %s; %s; answers %s%s" % (
            r["name"], "PASS" if r["pass"] else "FAIL", r.get("unknown", "-"), r.get("nack", "-"), r.get("phantom", "-"),
            "; ".join(r.get("notes", [])), r.get("answers", {}), "".join("\n  " + x for x in extra)))
        if r.get("logs"):
            print("  logs kept in %s" % r["logs"])
    ok = results and all(r["pass"] for r in results)
    print("\nscenarios: %d passed, %d failed" % (sum(r["pass"] for r in results), sum(not r["pass"] for r in results)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
