"""Re-key the committed stress records to a rebuilt 50,000-tumor database, after checking that
the rebuilt database gives the same records (one-off migration, 2026-12-02).

Why: a record's cache key holds the database's fingerprint, and until 2026-12-02 the
fingerprint depended on how long each shard took to build (the shards' checksummed
``shard.json`` held the build time). A rebuild of the same seed — the same content, tumor for
tumor — therefore had another fingerprint, and the records of the earlier build were never
found. The fingerprint no longer holds the timing; this script moves each record to its key
under DB's fingerprint, the draw it belongs to recomputed from DB.

It is not a blind rename: ``--check N`` first recomputes N kept patients from scratch on DB
(the whole pipeline: registration, search, refinement, plans) and stops unless every figure of
every one of them equals the stored record (the time it took aside), to within
``--tolerance`` (absolute for a coverage or a Dice, relative for a volume; default 0: bit for
bit). It prints the largest difference.

    python docs/data/stress-50k/rekey.py DB CACHE_DIR --check 2 [--tolerance 0.01]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from gliomatch.database import Database
from gliomatch.evaluation import stress as S

TIMES = {"seconds", "refine_s"}  # how long it took: not part of the result


def _recompute(db_path, setting, j, prior):
    db = Database.open(db_path)
    cfg = S.StressConfig()
    return S._run_patient(db, db.atlas(), prior, j, setting, 0, cfg, "syn", S.MARGIN_MM,
                          db.build_config.size_filter.flair_max_cm3, True)  # fmt: skip


def _differences(a, b, tolerance: float) -> tuple[list[str], float]:
    """The figures of records ``a`` (recomputed) and ``b`` (stored) that differ by more than
    ``tolerance`` (absolute below 1, relative above: a coverage or a Dice, or a volume), and the
    largest such difference of a number."""
    out, largest = [], 0.0
    for k in sorted(set(a) | set(b)):
        if k in TIMES:
            continue
        x, y = a.get(k), b.get(k)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if math.isnan(x) and math.isnan(y):
                continue
            rel = abs(float(x) - float(y)) / max(1.0, abs(float(y)))
            largest = max(largest, rel)
            if rel <= tolerance:
                continue
        elif x == y:
            continue
        out.append(f"{k}: stored {y!r}, recomputed {x!r}")
    return out, largest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("cache")
    ap.add_argument("--check", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.0)
    args = ap.parse_args()
    db = Database.open(args.db)
    files = sorted(Path(args.cache).glob("*.json"))
    pat = re.compile(r"^(?P<setting>[a-z]+)-(?P<j>\d{4})-(?P<key>[0-9a-f]{20})\.json$")
    parsed = [(f, pat.match(f.name)) for f in files]
    if any(m is None for _, m in parsed):
        raise SystemExit("unexpected file names in the cache folder")
    top = max(int(m["j"]) for _, m in parsed)
    draws = S.prior_draws(db, S.MAX_DRAWS_PER_PATIENT * 100)
    priors = [next(draws) for _ in range(top + 1)]
    # check: the first kept patients of distinct settings, recomputed from scratch
    chosen, seen = [], set()
    for f, m in parsed:
        rec = json.loads(f.read_text())
        if rec["status"] == "ok" and m["setting"] not in seen and len(chosen) < args.check:
            chosen.append((f, m, rec))
            seen.add(m["setting"])
    for f, m, rec in chosen:
        again = _recompute(args.db, m["setting"], int(m["j"]), priors[int(m["j"])])
        diff, largest = _differences(again, rec, args.tolerance)
        if diff:
            print(f"{f.name}: the rebuilt database gives another record:", *diff, sep="\n  ")
            return 1
        print(f"{f.name}: recomputed on {args.db}: every figure within {args.tolerance:g} "
              f"(largest difference {largest:.3g})", flush=True)  # fmt: skip
    moved = 0
    for f, m in parsed:
        j = int(m["j"])
        key = S.patient_key(db, m["setting"], j, priors[j])
        new = f.with_name(f"{m['setting']}-{j:04d}-{key}.json")
        if new != f:
            f.rename(new)
            moved += 1
    print(f"{moved} of {len(files)} records re-keyed to database {db.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
