"""`pasu bench soak`: many concurrent clients against one cloud worker for a while.

A reliability run, not a speed run: N client threads (one channel each, as N
devices would have) send segment after segment — ``Offload`` streams carrying a
device n-best and/or ``Recognize`` calls — made from the shipped clips, each
with a unique request id, until ``--duration`` has passed (or each client has
sent ``--segments-per-client``). Every segment ends one of three ways:

* **answered** — OK, and the response carries the request id that was sent;
* **error** — the server answered with a non-OK status (or a wrong request id);
* **lost** — no answer: the deadline passed (``DEADLINE_EXCEEDED``), the
  connection failed (``UNAVAILABLE``/``CANCELLED``), or the call was still open
  when the run's hard stop came.

Without ``--target`` the worker is started as a *child process* (``pasu cloud
serve`` with the same flags, on 127.0.0.1, any free port, the tiny model unless
``--serve-model`` says otherwise), so its resident memory, threads and open
files can be sampled from ``/proc/PID`` over the whole run without the clients'
own allocations mixed in. With ``--target`` (loopback only) pass
``--worker-pid`` to get the same samples.

Bounded by construction: a duration, a per-call deadline, an optional segment
count per client, a hard stop at duration + deadline + 30 s, loopback only.
Prints a table and, last, one JSON line::

    {"segments", "answered", "errors", "lost", "p50_s", "p99_s", "rss_growth_mb", ...}
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pasu.cli import flag_values
from pasu.resources import example_audio
from pasu.tools.bench.load import load_clips, pct, send

LOST_CODES = ("DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED")
RPCS = ("mix", "offload", "recognize")
HARD_STOP_SLACK_S = 30.0


# -- options and result ---------------------------------------------------------------
@dataclass
class SoakOptions:
    duration_s: float = 60.0
    concurrency: int = 16
    segments_per_client: int | None = None  # None: until the duration has passed
    rpc: str = "mix"  # mix: Offload (with a device n-best) and Recognize, alternating
    timeout_s: float = 30.0  # per-call deadline
    request_beam: int | None = None  # beam_size sent with each request (None: the worker's default)
    pace_s: float = 0.0  # a client starts a segment at most every pace_s seconds (0: back to back)
    sample_interval_s: float = 1.0  # /proc sampling period
    token: str | None = None  # bearer token, if the worker wants one

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.duration_s > 24 * 3600:
            raise ValueError(f"duration must be in (0, 86400] seconds, got {self.duration_s}")
        if not 1 <= self.concurrency <= 1024:
            raise ValueError(f"concurrency must be in [1, 1024], got {self.concurrency}")
        if self.segments_per_client is not None and self.segments_per_client < 1:
            raise ValueError(f"segments per client must be >= 1, got {self.segments_per_client}")
        if self.rpc not in RPCS:
            raise ValueError(f"rpc must be one of {RPCS}, got {self.rpc!r}")
        if self.timeout_s <= 0:
            raise ValueError("timeout must be > 0")
        if self.pace_s < 0:
            raise ValueError("pace must be >= 0")


@dataclass
class Sample:
    t: float  # seconds since the load started (negative: before)
    rss_mb: float
    threads: int
    fds: int
    cpu_s: float


@dataclass
class SoakResult:
    concurrency: int
    segments: int = 0  # sent
    answered: int = 0
    errors: int = 0
    lost: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    by_rpc: dict[str, list[float]] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)  # non-OK outcomes by status name
    samples: list[Sample] = field(default_factory=list)
    worker_log: dict[str, int] = field(default_factory=dict)  # child worker: request lines by status, ERRORs

    def memory(self) -> dict:
        """RSS before the load (after warm-up), at the end, at its peak, and growth."""
        if not self.samples:
            return {}
        before = [s for s in self.samples if s.t <= 0] or self.samples[:1]
        during = [s for s in self.samples if s.t > 0] or self.samples[-1:]
        first, last = before[-1], during[-1]
        mid = min(during, key=lambda s: abs(s.t - last.t / 2))
        return {
            "rss_before_mb": round(first.rss_mb, 1),
            "rss_end_mb": round(last.rss_mb, 1),
            "rss_peak_mb": round(max(s.rss_mb for s in self.samples), 1),
            "rss_growth_mb": round(last.rss_mb - first.rss_mb, 1),
            "rss_growth_2nd_half_mb": round(last.rss_mb - mid.rss_mb, 1),
            "threads_before": first.threads,
            "threads_end": last.threads,
            "fds_before": first.fds,
            "fds_end": last.fds,
            "worker_cpu_s": round(last.cpu_s - first.cpu_s, 1),
            "rss_samples": len(self.samples),
        }

    def summary(self) -> dict:
        out = {
            "segments": self.segments,
            "answered": self.answered,
            "errors": self.errors,
            "lost": self.lost,
            "p50_s": round(pct(self.latencies, 0.5), 4),
            "p99_s": round(pct(self.latencies, 0.99), 4),
            "max_s": round(max(self.latencies), 4) if self.latencies else None,
            "throughput_sps": round(self.answered / self.wall_s, 3) if self.wall_s else 0.0,
            "concurrency": self.concurrency,
            "wall_s": round(self.wall_s, 1),
        }
        mem = self.memory()
        out["rss_growth_mb"] = mem.get("rss_growth_mb")
        out.update(mem)
        for rpc, xs in sorted(self.by_rpc.items()):
            out[f"{rpc}_answered"] = len(xs)
            out[f"{rpc}_p99_s"] = round(pct(xs, 0.99), 4)
        if self.codes:
            out["codes"] = dict(self.codes)
        if self.worker_log:
            out["worker_log"] = dict(self.worker_log)
        return out


# -- loopback only --------------------------------------------------------------------
def check_loopback(target: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port) if every address of host is loopback, else SystemExit."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SystemExit(f"--target must be HOST:PORT, got {target!r}")
    host = host.strip("[]")
    try:
        addrs = {ipaddress.ip_address(host)}
    except ValueError:
        if host != "localhost":  # no DNS look-ups for other names
            msg = f"--target must be a loopback address (127.0.0.0/8, ::1, localhost), got {host!r}"
            raise SystemExit(msg) from None
        addrs = {ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(host, None)}
    if not addrs or not all(a.is_loopback for a in addrs):
        raise SystemExit(f"--target must be a loopback address (127.0.0.0/8, ::1, localhost), got {host!r}")
    return host, int(port)


# -- /proc sampling ---------------------------------------------------------------------
def proc_sample(pid: int, t: float) -> Sample | None:
    """RSS, thread count, open files and CPU time of ``pid`` (Linux), or None if it is gone."""
    try:
        rss, threads = 0.0, 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return Sample(t, rss, threads, fds, cpu)
    except (OSError, ValueError, IndexError):
        return None


class Sampler:
    """Samples a process every ``interval`` seconds in a daemon thread."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[Sample] = []  # t: monotonic time until stop() makes it relative to the load's start
        self.t0: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def _take(self) -> None:
        s = proc_sample(self.pid, time.monotonic())
        if s is not None:
            self.samples.append(s)

    def mark_start(self) -> None:
        """The load starts now (t = 0): a sample just before it."""
        self._take()
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def stop(self) -> list[Sample]:
        self._take()
        self._stop.set()
        self._thread.join(timeout=5)
        t0 = self.t0 if self.t0 is not None else (self.samples[0].t if self.samples else 0.0)
        for s in self.samples:
            s.t -= t0
        return sorted(self.samples, key=lambda x: x.t)


# -- the worker as a child process --------------------------------------------------
class ChildWorker:
    """``pasu cloud serve`` in a child process on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, model: str, worker_args: list[str], log_path: Path, env: dict | None = None) -> None:
        self.model, self.worker_args, self.log_path, self.env = model, worker_args, log_path, env
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pasu.tools.bench.soak",
            "cloud",
            "serve",
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *self.worker_args,
        ]

    def start(self, timeout: float = 300.0) -> int:
        """Start the child, wait until health says SERVING; returns the port."""
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, env=self.env, text=True
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        end = time.monotonic() + timeout
        while self.port is None:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = ""
            if "listening on" in line:
                self.port = int(line.strip().rpartition(":")[2])
            elif self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise RuntimeError(
                    f"the worker did not start (exit {self.proc.returncode}); log: {self.log_path}\n{self.log_tail()}"
                )
        self._wait_serving(end)
        return self.port

    def _wait_serving(self, end: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            hs = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    st = hs.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                    if st == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > end:
                    self.stop()
                    raise RuntimeError(
                        f"the worker never became SERVING (exit {self.proc.returncode}); "
                        f"log: {self.log_path}\n{self.log_tail()}"
                    )
                time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL if it is still there after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def count_log(path: Path) -> dict[str, int]:
    """Request lines by status, and ERROR lines, in a worker's JSON log."""
    out: dict[str, int] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("msg") == "request":
            key = f"request_{rec.get('status')}"
            out[key] = out.get(key, 0) + 1
        if rec.get("level") in ("ERROR", "CRITICAL"):
            out["error_lines"] = out.get("error_lines", 0) + 1
    return out


# -- the load -----------------------------------------------------------------------
def _metadata(token: str | None) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()


def warm_up(target: str, clips, opts: SoakOptions):
    """One Recognize per clip (nbest 3); the answers become the device n-bests Offload sends."""
    from pasu.cloud import client as C
    from pasu.decoding.recognizer import NBestEntry
    from pasu.slu import join_intent
    from pasu.wire import device_result

    devices = []
    ch = C.channel(target)
    try:
        s = C.stub(ch)
        for i, clip in enumerate(clips):
            r = s.Recognize(
                C.recognize_request(f"soak-warmup-{time.time_ns()}-{i}", clip, beam_size=opts.request_beam, nbest=3),
                timeout=max(60.0, opts.timeout_s),
                metadata=_metadata(opts.token),
            )
            nbest = [
                NBestEntry(
                    text=join_intent(h.intent, h.text),
                    tokens=[],
                    token_ids=list(h.token_ids),
                    score=h.scores.total,
                    scores={},
                    yseq=[],
                )
                for h in r.result.hypotheses
            ]
            device = device_result(nbest, "soak-device", "0", None, 0.5)  # the agent's message
            device.model.token_list_id = r.result.model.token_list_id  # the worker's own: ids are reused
            devices.append(device)
    finally:
        ch.close()
    return devices


def _call(stub, rpc: str, rid: str, clip, device, opts: SoakOptions, metadata) -> str | None:
    """One Offload or Recognize call: None when answered as asked, else the failure's code."""
    import grpc

    try:
        r = send(stub, rpc, rid, clip, device, opts.request_beam, opts.timeout_s, metadata)
    except grpc.RpcError as e:
        return e.code().name
    return None if r.request_id == rid and r.HasField("result") else "WRONG_RESPONSE"


def run_load(target: str, clips, devices, opts: SoakOptions, sampler: Sampler | None = None) -> SoakResult:
    """N client threads, each on its own channel, until the duration or the segment count is reached."""
    from pasu.cloud import client as C

    res = SoakResult(concurrency=opts.concurrency)
    lock = threading.Lock()
    inflight: dict[str, float] = {}
    run_id = f"soak-{os.getpid()}-{time.time_ns()}"
    metadata = _metadata(opts.token)
    stop = threading.Event()
    t0 = time.monotonic()
    deadline = t0 + opts.duration_s

    def record(rpc: str, dt: float | None, code: str | None) -> None:
        with lock:
            if code is None:
                res.answered += 1
                res.latencies.append(dt)
                res.by_rpc.setdefault(rpc, []).append(dt)
            else:
                res.codes[code] = res.codes.get(code, 0) + 1
                if code in LOST_CODES:
                    res.lost += 1
                else:
                    res.errors += 1

    def client(ci: int) -> None:
        ch = C.channel(target)
        s = C.stub(ch)
        k = 0
        next_start = time.monotonic() + (ci / opts.concurrency) * opts.pace_s  # spread the clients' phases
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if opts.segments_per_client is not None and k >= opts.segments_per_client:
                    return
                if opts.pace_s:
                    if stop.wait(max(0.0, next_start - time.monotonic())) or time.monotonic() >= deadline:
                        return
                    next_start = max(next_start + opts.pace_s, time.monotonic())
                clip = (7 * ci + k) % len(clips)
                rpc = opts.rpc if opts.rpc != "mix" else ("offload", "recognize")[(ci + k) % 2]
                rid = f"{run_id}-c{ci}-{k}"
                k += 1
                with lock:
                    res.segments += 1
                    inflight[rid] = time.monotonic()
                t = time.monotonic()
                code = _call(s, rpc, rid, clips[clip], devices[clip], opts, metadata)
                with lock:
                    if inflight.pop(rid, None) is None:
                        continue  # the hard stop already counted it as lost
                record(rpc, time.monotonic() - t, code)
        finally:
            ch.close()

    if sampler is not None:
        sampler.mark_start()
    threads = [
        threading.Thread(target=client, args=(i,), name=f"soak-client-{i}", daemon=True)
        for i in range(opts.concurrency)
    ]
    for th in threads:
        th.start()
    hard_stop = deadline + opts.timeout_s + HARD_STOP_SLACK_S
    for th in threads:
        th.join(max(0.0, hard_stop - time.monotonic()))
    stop.set()
    res.wall_s = time.monotonic() - t0
    with lock:  # calls still open at the hard stop never got an answer
        res.lost += len(inflight)
        if inflight:
            res.codes["OPEN_AT_HARD_STOP"] = len(inflight)
        inflight.clear()
    if sampler is not None:
        res.samples = sampler.stop()
    return res


def worker_flags(args: argparse.Namespace, concurrency: int) -> list[str]:
    """The batching/decoding flags of this command, passed on to `pasu cloud serve`."""
    return [
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-batch-wait-ms",
        str(args.max_batch_wait_ms),
        "--max-queue",
        str(max(args.max_queue, concurrency)),
        "--beam-size",
        str(args.beam_size),
        "--max-beam-size",
        str(max(args.max_beam_size, args.beam_size)),
        "--nbest",
        str(args.nbest),
        "--ctc-weight",
        str(args.ctc_weight),
        "--reuse",
        args.reuse,
        "--reuse-margin",
        str(args.reuse_margin),
    ]


def run_soak(
    opts: SoakOptions,
    target: str | None = None,
    serve_model: str = "tiny",
    worker_args: list[str] | None = None,
    worker_pid: int | None = None,
    worker_log: Path | None = None,
    clip_limit: int | None = None,
    worker_env: dict | None = None,
) -> SoakResult:
    """Start a child worker unless ``target`` is given, warm up, run the load, stop the worker."""
    clips = load_clips(example_audio(clip_limit))
    child = None
    tmp = None
    if target is None:
        if worker_log is None:
            tmp = tempfile.TemporaryDirectory(prefix="pasu-soak-")
            worker_log = Path(tmp.name) / "worker.log"
        child = ChildWorker(serve_model, worker_args or [], worker_log, worker_env)
        target = f"127.0.0.1:{child.start()}"
        worker_pid = child.pid
    else:
        check_loopback(target)
    try:
        devices = warm_up(target, clips, opts)
        sampler = None
        if worker_pid is not None:
            sampler = Sampler(worker_pid, opts.sample_interval_s).start()
            time.sleep(min(1.0, opts.sample_interval_s))
        res = run_load(target, clips, devices, opts, sampler)
    finally:
        if child is not None:
            rc = child.stop()
    if child is not None:
        res.worker_log = count_log(worker_log)
        res.worker_log["exit_code"] = rc if rc is not None else -1
    if tmp is not None:
        tmp.cleanup()
    return res


# -- CLI --------------------------------------------------------------------------------
def register_bench(bsub: argparse._SubParsersAction) -> None:
    """Add ``pasu bench soak`` to the ``bench`` subcommands."""
    from pasu.cloud.cli import add_worker_args

    d = SoakOptions()
    c = bsub.add_parser("soak", help="soak a cloud worker: N clients for S seconds; errors, lost, p99, memory")
    c.add_argument("--duration", type=float, default=d.duration_s, help=f"seconds of load (default {d.duration_s:g})")
    c.add_argument("--concurrency", type=int, default=d.concurrency, help=f"client threads (default {d.concurrency})")
    c.add_argument(
        "--segments-per-client",
        type=int,
        default=None,
        help="stop a client after this many segments (default: run for the duration)",
    )
    c.add_argument(
        "--rpc",
        choices=RPCS,
        default=d.rpc,
        help="offload (with a device n-best), recognize, or mix (alternating; default)",
    )
    c.add_argument("--target", default=None, help="HOST:PORT of a running worker (loopback only)")
    c.add_argument("--worker-pid", type=int, default=None, help="with --target: sample this process's memory")
    c.add_argument("--token-file", type=Path, default=None, help="bearer token (first line)")
    c.add_argument(
        "--serve-model",
        default="tiny",
        metavar="DIR",
        help="without --target: the child worker's model (default: tiny)",
    )
    c.add_argument("--worker-log", type=Path, default=None, help="keep the child worker's JSON log here")
    c.add_argument("--timeout", type=float, default=d.timeout_s, help=f"per-call deadline (default {d.timeout_s:g} s)")
    c.add_argument("--request-beam", type=int, default=None, help="beam_size sent with each request")
    c.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="a client starts a segment at most every PACE seconds, like a device's speech rate "
        "(default 0: back to back, a closed loop)",
    )
    c.add_argument(
        "--worker-threads",
        type=int,
        default=None,
        help="child worker: OMP_NUM_THREADS (torch intra-op threads); default: torch's own",
    )
    c.add_argument(
        "--worker-args",
        default="",
        help="more `pasu cloud serve` flags for the child worker, e.g. '--idempotency-cache-size 0'",
    )
    c.add_argument("--sample-interval", type=float, default=d.sample_interval_s, help="memory sampling period, s")
    c.add_argument("--clips", type=int, default=None, help="use only the first N shipped clips")
    add_worker_args(c, serve=False)
    c.set_defaults(func=run_soak_command)


def format_table(res: SoakResult) -> str:
    s = res.summary()
    rows = [
        ("clients", s["concurrency"]),
        ("wall s", s["wall_s"]),
        ("segments sent", s["segments"]),
        ("answered", s["answered"]),
        ("errors", s["errors"]),
        ("lost", s["lost"]),
        ("throughput seg/s", s["throughput_sps"]),
        ("p50 s", s["p50_s"]),
        ("p99 s", s["p99_s"]),
        ("max s", s["max_s"]),
    ]
    for rpc in sorted(res.by_rpc):
        rows.append((f"{rpc}: answered / p99 s", f"{s[f'{rpc}_answered']} / {s[f'{rpc}_p99_s']}"))
    if "rss_before_mb" in s:
        rows += [
            ("worker RSS before → end MB", f"{s['rss_before_mb']} → {s['rss_end_mb']}"),
            ("worker RSS peak MB", s["rss_peak_mb"]),
            ("RSS growth MB", s["rss_growth_mb"]),
            ("RSS growth, 2nd half MB", s["rss_growth_2nd_half_mb"]),
            ("worker threads before → end", f"{s['threads_before']} → {s['threads_end']}"),
            ("worker open files before → end", f"{s['fds_before']} → {s['fds_end']}"),
            ("worker CPU s", s["worker_cpu_s"]),
        ]
    if res.codes:
        rows.append(("non-OK codes", json.dumps(res.codes)))
    if res.worker_log:
        rows.append(("worker log", json.dumps(res.worker_log)))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def run_soak_command(args: argparse.Namespace) -> int:
    try:
        opts = SoakOptions(
            duration_s=args.duration,
            timeout_s=args.timeout,
            sample_interval_s=args.sample_interval,
            pace_s=args.pace,
            token=args.token_file.read_text().splitlines()[0].strip() if args.token_file else None,
            **flag_values(args, "concurrency segments_per_client rpc request_beam"),
        )
    except (ValueError, OSError, IndexError) as e:
        raise SystemExit(f"pasu bench soak: {e}") from None
    if args.target:
        check_loopback(args.target)
    res = run_soak(
        opts,
        target=args.target,
        serve_model=args.serve_model,
        worker_args=worker_flags(args, opts.concurrency) + shlex.split(args.worker_args),
        worker_pid=args.worker_pid,
        worker_log=args.worker_log,
        clip_limit=args.clips,
        worker_env=({**os.environ, "OMP_NUM_THREADS": str(args.worker_threads)} if args.worker_threads else None),
    )
    print(format_table(res))
    print(json.dumps(res.summary()), flush=True)
    return 0 if res.errors == 0 and res.lost == 0 and res.answered == res.segments else 1


def _serve_main(argv: list[str]) -> int:
    """The child worker: exactly `pasu cloud serve`, without importing every other command."""
    from pasu.cloud.cli import register

    p = argparse.ArgumentParser(prog="pasu")
    sub = p.add_subparsers(dest="command", required=True)
    register(sub)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(_serve_main(sys.argv[1:]))
