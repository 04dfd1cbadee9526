"""``make bench``'s ``minilm`` section: this project beside LitServe on a sentence encoder.

The MLPs of the other section say little about a model whose requests carry text: here
every request is one sentence, tokenized, run through all-MiniLM-L6-v2 (6 layers, 384
wide) and mean-pooled to 384 floats. Both servers run the same tokenizer file, the same
encoder module (``registry.examples.minilm``) and the same pooling on the same weights,
so the comparison is of the serving alone:

- this project: ``registry serve`` with the repository's ``minilm`` entry as is (handler
  ``registry.handlers.text:SentenceEmbedding``, ``max_batch_size: 64``, adaptive batching),
  weights from the repository's ``weights/``;
- LitServe (``bench/peers/servers/litserve_minilm.py``, in the ``litserve`` venv of
  ``make bench-peers``): ``max_batch_size=64``, ``batch_timeout`` LITSERVE_BATCH_MS,
  ``workers_per_device=1``; ``batch`` tokenizes every text of the batch in one
  ``encode_batch``, as the project's handler does.

Both answers to the bench sentence are checked against the same embedding computed
in-process before either server is timed (cosine >= MIN_COSINE). Rows per forward pass
come from this project's ``registry_batch_rows`` histogram (``/metrics``, read before and
after each cell) and from the sizes LitServe's ``batch`` writes to a file.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file
from tokenizers import Tokenizer

from bench import load
from bench.launch import free_port, launch, registry_serve
from bench.peers import ROOT, cache_dir
from bench.peers.install import TORCH, ensure_venv, peer_env, venv_bin
from bench.peers.run import QUIET_WAIT_S, cores, measure, other_cores
from bench.rounds import in_turns, paired_ratios
from registry.examples.minilm import MiniLMEncoder, token_batch
from registry.threads import use_threads

NAME = "minilm"
VERSION = "1"
# NOTE: one body for every request (bench/load.py and wrk send one): a realistic short
# query, 14 words, 17 tokens with [CLS] and [SEP]. Neither side caches, so repeating it
# costs each the full tokenize and forward every time.
SENTENCE = "How do I reset my password after moving to a new phone number abroad?"
# NOTE: LitServe waits this long for a batch to fill. Its docs pair max_batch_size with a
# batch_timeout of a few ms; 2 ms is what `make bench-peers` gives every batching peer,
# and LitServe's better setting here: at c=1 every request pays it (beside a ~15 ms
# single-sentence forward on 2 cores), while on 2 quiet cores 5 ms gave bigger batches
# (27 rows, not 16) but the same req/s at c=64 and ~20 % fewer at c=1.
LITSERVE_BATCH_MS = 2.0
MIN_COSINE = 0.9999
SETTLE_S = 1.0  # around a cell, so the passes of requests in flight land on the right side
SERVERS = ("registry", "litserve")


@dataclass
class Passes:
    """Forward passes by rows, as non-cumulative counts per ``le`` bucket (powers of 2)."""

    buckets: dict[float, float] = field(default_factory=dict)
    rows: float = 0.0

    @property
    def count(self) -> float:
        return sum(self.buckets.values())

    @property
    def mean(self) -> float:
        return self.rows / self.count if self.count else 0.0

    def __sub__(self, earlier: Passes) -> Passes:
        edges = set(self.buckets) | set(earlier.buckets)
        diff = {e: self.buckets.get(e, 0.0) - earlier.buckets.get(e, 0.0) for e in edges}
        return Passes({e: n for e, n in sorted(diff.items()) if n}, self.rows - earlier.rows)

    def as_dict(self) -> dict[str, Any]:
        shown = {("+Inf" if math.isinf(e) else f"{e:g}"): int(n) for e, n in self.buckets.items()}
        return {"passes": int(self.count), "rows": int(self.rows), "mean": round(self.mean, 2)} | {
            "buckets": shown
        }

    @classmethod
    def from_sizes(cls, sizes: list[int]) -> Passes:
        """LitServe's batch sizes, bucketed as the project's histogram buckets them."""
        buckets: dict[float, float] = {}
        for size in sizes:
            edge = float(1 << max(size - 1, 0).bit_length())
            buckets[edge] = buckets.get(edge, 0.0) + 1
        return cls(dict(sorted(buckets.items())), float(sum(sizes)))

    @classmethod
    def from_metrics(cls, text: str, model: str = NAME, version: str = VERSION) -> Passes:
        """``registry_batch_rows`` of one (model, version) from a ``/metrics`` page."""
        cumulative: dict[float, float] = {}
        rows = 0.0
        for family in text_string_to_metric_families(text):
            if family.name != "registry_batch_rows":
                continue
            for sample in family.samples:
                labels = sample.labels
                if labels.get("model") != model or labels.get("version") != version:
                    continue
                if sample.name.endswith("_bucket"):
                    cumulative[float(labels["le"])] = sample.value
                elif sample.name.endswith("_sum"):
                    rows = sample.value
        buckets, below = {}, 0.0
        for edge, total in sorted(cumulative.items()):
            if total - below:
                buckets[edge] = total - below
            below = total
        return cls(buckets, rows)


def manifest(repository_manifest: Path, instances: int | None = None) -> tuple[str, int, int]:
    """The repository's ``minilm`` entry alone, its ``max_batch_size`` and ``instances``.

    The entry is copied rather than rewritten so the bench serves what the repository
    serves (handler, tokenizer, truncation, batching); its paths resolve under
    ``--weights-dir``, the repository's ``weights/``. Only ``instances``, when given,
    replaces the entry's: an A/B of that setting without editing ``models.yaml``.
    """
    models = yaml.safe_load(repository_manifest.read_text())["models"]
    (entry,) = [m for m in models if m["name"] == NAME]
    entry["versions"] = [v for v in entry["versions"] if str(v["version"]) == VERSION]
    if instances is not None:
        entry["instances"] = instances
    text = yaml.safe_dump({"models": [entry]}, sort_keys=False)
    return text, int(entry["batching"]["max_batch_size"]), int(entry.get("instances", 1))


@dataclass(frozen=True)
class Rate:
    """Sentences per second in-process: ``passes`` at once of ``batch`` sentences each,
    each pass on ``threads`` torch intra-op threads."""

    batch: int
    threads: int
    passes: int
    per_s: float


class Reference:
    """The embedding computed in-process, as the handler computes it: what both servers'
    answers are checked against, and the in-process limit neither can beat."""

    def __init__(self, folder: Path, max_tokens: int = 256) -> None:
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_tokens)
        self.model = MiniLMEncoder().eval()
        self.model.load_state_dict(load_file(str(folder / "model.safetensors")))

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return token_batch(self.tokenizer, texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_ids(*self.tokenize(texts))

    def embed_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        """Forward, masked mean pooling, L2 normalisation: the handler's ``embed``."""
        with torch.inference_mode():
            states = self.model(ids, mask)
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
            unit: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return unit

    def limit(self, batches: tuple[int, ...], instances: int, seconds: float = 1.0) -> list[Rate]:
        """Sentences/s in-process (tokenize, forward, pool) at each batch size: one pass at
        a time with one torch intra-op thread and with torch's default (one per core),
        and, for ``instances`` > 1, that many passes at once with the default's threads
        split evenly between them: on 2 cores, one each, as the server runs them under load.

        NOTE: one thread as well as the default, because on a small shared machine the
        default's OpenMP threads can wait on each other for a time slice at every parallel
        region: then one thread is several times faster. The best of these is the most a
        server running the same passes can answer, whatever its HTTP costs.
        """
        default = torch.get_num_threads()
        layouts = {(1, 1), (default, 1), (max(1, default // instances), instances)}
        found = []
        try:
            for threads, passes in sorted(layouts, key=lambda layout: (layout[1], layout[0])):
                for batch in batches:
                    rate = self._rate([SENTENCE] * batch, threads, passes, seconds)
                    found.append(Rate(batch, threads, passes, round(rate, 1)))
        finally:
            use_threads(default)
        return found

    def _rate(self, texts: list[str], threads: int, passes: int, seconds: float) -> float:
        """Sentences/s of ``passes`` threads, each embedding ``texts`` over and over.

        NOTE: the first pass runs on the calling thread, as a lone pass runs on the one
        inference thread that keeps OpenMP workers; on a new thread beside this one's
        workers, a pass on several threads would take libgomp's slow path, which the
        server avoids (``registry.threads``).
        """
        counts = [0] * passes
        spans = [0.0] * passes
        ready = threading.Barrier(passes)

        def repeat(slot: int) -> None:
            use_threads(threads)
            for _ in range(3):
                self.embed(texts)
            ready.wait()
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                self.embed(texts)
                counts[slot] += len(texts)
            spans[slot] = time.perf_counter() - started

        others = [threading.Thread(target=repeat, args=(slot,)) for slot in range(1, passes)]
        for other in others:
            other.start()
        repeat(0)
        for other in others:
            other.join()
        return sum(counts) / max(spans)

    def split(self, batch: int, seconds: float = 0.5) -> dict[str, float]:
        """Milliseconds per pass of ``batch`` sentences on one thread: tokenizing, then the
        forward (with pooling), so the report can say where a server's CPU goes."""
        texts = [SENTENCE] * batch
        ids, mask = self.tokenize(texts)
        default = torch.get_num_threads()
        torch.set_num_threads(1)
        steps: dict[str, Callable[[], object]] = {
            "tokenize_ms": lambda: self.tokenize(texts),
            "forward_ms": lambda: self.embed_ids(ids, mask),
        }
        found: dict[str, float] = {}
        for name, step in steps.items():
            step()
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                step()
                count += 1
            found[name] = round((time.perf_counter() - started) / count * 1000, 3)
        torch.set_num_threads(default)
        return {"batch": batch} | found


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@dataclass
class Server:
    """One running server: where to send, and how to read its passes so far."""

    name: str
    target: str
    pgid: int
    passes: Callable[[], Passes]


@dataclass(frozen=True)
class Options:
    """What ``python -m bench`` passes on (see its ``--help``)."""

    concurrencies: list[int]
    duration: float = 5.0
    warmup: float = 2.0
    batch_ms: float = LITSERVE_BATCH_MS
    threads: int = 0  # LitServe worker's torch threads; 0: torch's default
    workers: int = 1  # LitServe's workers_per_device
    quiet: float = 0.0  # > 0: wait for foreign load below this many cores before a cell
    instances: int | None = None  # this project's ``instances``; None: models.yaml's
    rounds: int = 3  # every cell this many times, the two servers taking turns


@contextmanager
def serving(
    server: str, work: Path, weights: Path, max_batch: int, opts: Options
) -> Iterator[Server]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / f"{server}-{NAME}.log"
    if server == "registry":
        # NOTE: run from ``work``: a cwd without a stray .env.
        manifest = work / f"{NAME}.yaml"
        command, env = registry_serve(manifest, port, "--weights-dir", str(weights))
        with launch(server, command, env, work, log, f"{url}/readyz") as pgid:
            yield Server(server, f"{url}/models/{NAME}/predict", pgid, lambda: _scrape(url))
        return
    rows = work / "litserve-rows.txt"
    rows.write_text("")
    env = peer_env(cache_dir())
    command = [
        str(venv_bin(cache_dir(), "litserve", "python")),
        "-m",
        "bench.peers.servers.litserve_minilm",
        str(weights / NAME / VERSION),
        str(port),
        str(max_batch),
        str(opts.batch_ms / 1000),
        str(rows),
        str(opts.threads),
        str(opts.workers),
    ]
    with launch(server, command, env, ROOT, log, f"{url}/health") as pgid:
        yield Server(server, f"{url}/predict", pgid, lambda: _sizes(rows))


def _scrape(url: str) -> Passes:
    return Passes.from_metrics(httpx.get(f"{url}/metrics", timeout=10).text)


def _sizes(path: Path) -> Passes:
    return Passes.from_sizes([int(line) for line in path.read_text().split()])


def run(work: Path, opts: Options) -> dict[str, Any]:
    """Check both servers against the in-process embedding, then time each cell.

    Returns the result rows (``server``, ``model``, ``conc``, load figures, ``batch``) and
    the settings, checks and in-process limits for the JSON and the report.
    """
    weights = ROOT / "weights"
    folder = weights / NAME / VERSION
    if not (folder / "model.safetensors").is_file() or not (folder / "tokenizer.json").is_file():
        raise SystemExit(
            f"{folder} lacks model.safetensors or tokenizer.json: run "
            "`python -m registry.examples.minilm_files weights` (part of `make install`)"
        )
    text, max_batch, instances = manifest(ROOT / "models.yaml", opts.instances)
    (work / f"{NAME}.yaml").write_text(text)
    versions = ensure_venv(cache_dir(), "litserve", TORCH)
    reference = Reference(folder)
    want = reference.embed([SENTENCE])[0]
    _wait_quiet(-1, opts.quiet)
    # NOTE: half a batch as well: the rows of a pass when two instances share c=64's load.
    limits = reference.limit(tuple(sorted({1, max_batch // 2, max_batch})), instances)
    split = [reference.split(1), reference.split(max_batch)]
    body = json.dumps({"inputs": SENTENCE}).encode()
    results: list[dict[str, Any]] = []
    checks: dict[str, float] = {}
    answers: dict[str, np.ndarray] = {}
    with ExitStack() as stack:
        # NOTE: both up at once (the one not timed stopped), so each cell of one runs
        # seconds, not a whole server's run, from the same cell of the other: on a shared
        # machine the speed drifts.
        servers = [stack.enter_context(serving(n, work, weights, max_batch, opts)) for n in SERVERS]
        for server in servers:
            answers[server.name] = _check(server.target, body, want)
            checks[f"{server.name}_vs_in_process"] = round(cosine(answers[server.name], want), 7)
            load.run(server.target, body, 8, opts.warmup)
        # NOTE: every round of one concurrency, then the next, as bench.compare does
        for conc, (rnd, server) in product(opts.concurrencies, in_turns(servers, opts.rounds)):
            with alone(server, servers):
                r = _cell(server, body, conc, opts)
            results.append({"server": server.name, "model": NAME, "conc": conc, "round": rnd} | r)
            print(
                f"  {server.name:9} {NAME:7} c={conc:<3} {r['rps']:9.1f} req/s  "
                f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                f"non-2xx {r['non2xx']}  rows/pass {r['batch']['mean']:5.2f} "
                f"({r['batch']['passes']} passes)  cores: server {r['server_cores']:.2f} "
                f"load {r['load_cores']:.2f} other {r['other_cores']:.2f}  round {rnd + 1}",
                flush=True,
            )
    checks["registry_vs_litserve"] = round(cosine(answers["registry"], answers["litserve"]), 7)
    settings = {
        "sentence": SENTENCE,
        "duration_s": opts.duration,
        "rounds": opts.rounds,
        "quiet_cores": opts.quiet,
        "registry": {
            "max_batch_size": max_batch,
            "batching": "adaptive (models.yaml)",
            "instances": instances,
        },
        "litserve": {
            "version": versions.get("litserve"),
            "max_batch_size": max_batch,
            "batch_timeout_s": opts.batch_ms / 1000,
            "workers_per_device": opts.workers,
            "accelerator": "cpu",
            "torch_threads": opts.threads or f"torch's default ({torch.get_num_threads()})",
        },
    }
    return {
        "results": results,
        "checks": checks,
        "forward_limit": [asdict(rate) for rate in limits],
        "split": split,
        "settings": settings,
    }


@contextmanager
def alone(server: Server, servers: list[Server]) -> Iterator[None]:
    """Every other server's process group stopped (SIGSTOP) while ``server`` is timed.

    NOTE: idle, LitServe's loops use about a quarter of a core of 2: left running beside
    this project's cell, they would take that from it and read as foreign load.
    """
    others = [other.pgid for other in servers if other is not server]
    for pgid in others:
        os.killpg(pgid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pgid in others:
            os.killpg(pgid, signal.SIGCONT)


def _cell(server: Server, body: bytes, conc: int, opts: Options) -> dict[str, Any]:
    """One cell: load figures, the CPU seconds of the server's process group, of the load
    generator and of everything else (on a shared machine the last says whether a cell
    can be trusted), and the passes the server ran for it.

    With ``opts.quiet`` > 0, first wait (at most QUIET_WAIT_S) until foreign load is below
    it, and redo a disturbed cell at most twice, keeping the least disturbed attempt.
    """
    best: dict[str, Any] | None = None
    for attempt in range(3 if opts.quiet > 0 else 1):
        _wait_quiet(server.pgid, opts.quiet)
        time.sleep(SETTLE_S)  # NOTE: so passes of the last requests land before the read
        before = server.passes()
        r = measure(server.target, body, conc, opts.duration, server.pgid)
        time.sleep(SETTLE_S)
        passes = server.passes() - before
        r |= {"rps": round(float(r["rps"]), 1), "batch": passes.as_dict(), "attempt": attempt}
        r |= cores(r)
        if best is None or r["other_cpu_s"] < best["other_cpu_s"]:
            best = r
        if r["other_cores"] <= opts.quiet:
            break
        print(f"    c={conc}: foreign CPU {r['other_cores']:.2f} cores > {opts.quiet}, again")
    assert best is not None  # noqa: S101 -- the loop ran at least once
    return best


def _wait_quiet(pgid: int, quiet: float) -> None:
    """With ``quiet`` > 0, wait (at most QUIET_WAIT_S) until processes other than this
    one and group ``pgid`` (-1: none) use fewer cores than ``quiet``."""
    if quiet > 0:
        deadline = time.monotonic() + QUIET_WAIT_S
        while time.monotonic() < deadline and other_cores(pgid) > quiet:
            pass


def _check(target: str, body: bytes, want: np.ndarray) -> np.ndarray:
    headers = {"content-type": "application/json"}
    answer = httpx.post(target, content=body, headers=headers, timeout=60)
    answer.raise_for_status()
    got = np.asarray(answer.json()["outputs"], dtype=np.float32)
    if got.shape != want.shape or cosine(got, want) < MIN_COSINE:
        raise SystemExit(
            f"{target} answered an embedding of shape {got.shape} at cosine "
            f"{cosine(got.ravel()[: want.size], want):.6f} to the in-process one (< {MIN_COSINE})"
        )
    return got


def report(section: Mapping[str, Any], concurrencies: list[int]) -> None:
    """The minilm table, the in-process limit and whether the targets hold.

    Over several rounds each cell shows its median round (by req/s), and the ratio is the
    median of the rounds' ratios, each of two cells run one after the other, with its range.
    """
    rounds = _rounds(section["results"])
    cell = {key: median_round(rows) for key, rows in rounds.items()}
    ratios = {
        conc: paired_ratios(rounds[("litserve", conc)], rounds[("registry", conc)])
        for conc in concurrencies
    }
    limits = section["forward_limit"]
    print(
        "\n| model | c | registry req/s | p50 ms | p99 ms | rows/pass | LitServe req/s "
        "| p50 ms | p99 ms | rows/pass | registry ÷ LitServe |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for conc in concurrencies:
        ours, theirs = cell[("registry", conc)], cell[("litserve", conc)]
        spread = (
            f" ({min(ratios[conc]):.2f}-{max(ratios[conc]):.2f})" if len(ratios[conc]) > 1 else ""
        )
        print(
            f"| {NAME} | {conc} | {ours['rps']} | {ours['p50_ms']:.2f} | {ours['p99_ms']:.2f} "
            f"| {ours['batch']['mean']:.2f} | {theirs['rps']} | {theirs['p50_ms']:.2f} "
            f"| {theirs['p99_ms']:.2f} | {theirs['batch']['mean']:.2f} "
            f"| {statistics.median(ratios[conc]):.2f}x{spread} |"
        )
    print("\nrows per pass (passes per bucket, le):")
    for conc in concurrencies:
        for server in SERVERS:
            batch = cell[(server, conc)]["batch"]
            print(f"  {server:9} c={conc:<3} {batch['buckets']}")
    print("\nCPU per cell (cores busy; server ms of CPU per request; other = foreign load):")
    for conc in concurrencies:
        for server in SERVERS:
            r = cell[(server, conc)]
            per = float(r["server_cpu_s"]) * 1000 / max(int(r["requests"]), 1)
            print(
                f"  {server:9} c={conc:<3} server {r['server_cores']:.2f}  {per:6.1f} ms/req  "
                f"load {r['load_cores']:.2f}  other {r['other_cores']:.2f}"
            )
    print("in-process, tokenize + forward + pool (sentences/s):")
    for r in limits:
        print(
            f"  batch {r['batch']:3}, {r['passes']} pass(es) at once of "
            f"{r['threads']} thread(s) each: {r['per_s']:.0f}/s"
        )
    for part in section["split"]:
        print(
            f"in-process pass of {part['batch']}, one thread: tokenize "
            f"{part['tokenize_ms']:.2f} ms, forward + pool {part['forward_ms']:.2f} ms"
        )
    print(f"answers: cosine {section['checks']}")
    litserve = section["settings"]["litserve"]
    print(
        f"LitServe {litserve['version']}: max_batch_size {litserve['max_batch_size']}, "
        f"batch_timeout {litserve['batch_timeout_s'] * 1000:g} ms, "
        f"workers_per_device {litserve['workers_per_device']}, "
        f"torch threads {litserve['torch_threads']}"
    )
    targets = {64: 2.0, 1: 1.0}
    for conc, wanted in targets.items():
        if conc in ratios:
            ratio = statistics.median(ratios[conc])
            verdict = "holds" if ratio >= wanted else "MISSED"
            of = f" (median of {len(ratios[conc])} rounds)" if len(ratios[conc]) > 1 else ""
            print(
                f"target c={conc}: registry ÷ LitServe >= {wanted:g}x: {ratio:.2f}x{of}, {verdict}"
            )
            if conc > 1:  # NOTE: one client waits on each answer: latency, not throughput
                print(_headroom(wanted * float(cell[("litserve", conc)]["rps"]), limits))


def _rounds(results: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Each (server, concurrency)'s rounds."""
    rounds: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        rounds.setdefault((r["server"], r["conc"]), []).append(r)
    return rounds


def median_round(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round of median req/s (the lower of the two middle ones for an even count): a
    real cell, so its latency and passes go with its req/s."""
    return sorted(rows, key=lambda r: float(r["rps"]))[(len(rows) - 1) // 2]


def _headroom(needed: float, limits: list[dict[str, Any]]) -> str:
    """What a target asks of the machine: its req/s against the best in-process rate,
    which no server of the same passes can beat (above 1.0 it cannot be met here)."""
    best = max(limits, key=lambda r: float(r["per_s"]))
    return (
        f"  needs {needed:.1f} req/s: {needed / float(best['per_s']):.2f} of the best "
        f"in-process rate, {best['per_s']:.0f}/s (batch {best['batch']}, "
        f"{best['passes']} x {best['threads']} thread(s))"
    )
