#!/usr/bin/env python3
"""Generate a large, realistic ``jsonl`` catalog for benchmarking ``policyd``.

The output follows the ``jsonl`` import format of docs/spec cli.md ("Catalog import
formats"): all experiment records first, then one file record per line. It is shaped
like a beamline facility's DM catalog so that import, planning and reporting are
measured on data that looks like production rather than on uniform toy files:

* file sizes reproduce the ``dm-get-file-collection-stats`` figures for Smith-Mar18
  (mean 9634554.76 B, std dev 21275858 B, min 14 B, max 251666432 B), using a mixture
  of constant-size detector tif frames, h5 scan frames, large XPCS ``.imm`` files and a
  few small scratch files, so that rules keyed on names or sizes see realistic mixes;
* a fixed share of files "do not yet satisfy the rules" (only an unverified replica on
  the station's DAQ location), the rest are settled on ``voyager`` (and on ``tape`` once
  their experiment ended more than 90 days before ``--now``), so a plan has a known,
  sizeable amount of work;
* ``--stations``, ``--recent-copy`` and ``--scratch-days`` shape the settled part to a
  given rule set (bench/plan.py uses them for examples/aps: its three beamlines, a second
  copy of recent experiments on ``hpc``, no scratch old enough to expire), so that the
  share needing action is the share a plan acts on.

The script is standalone (stdlib + orjson, no ``policyd`` import) so that it can
generate inputs for any version of the tool under test. Output is a pure function of
the arguments (byte-identical for identical arguments) and is streamed: memory does not
grow with ``--files``.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import orjson

# Reference figures from the DM screenshot (aps-data-management-2018.md), printed next to
# the achieved statistics so a reader can compare them at a glance.
DM_N_FILES = 169_321
DM_MEAN = 9_634_554.76451
DM_STD = 21_275_858.208
DM_MIN = 14
DM_MAX = 251_666_432

# File kinds: (cumulative probability, kind). The size distribution per kind is below.
# Parameters were fitted (analytic moments of a clipped lognormal, solved with scipy
# once, offline) so that the *mixture*, clipped to [DM_MIN, DM_MAX], has the DM mean and
# standard deviation; clipping then also yields the DM minimum and maximum exactly.
P_TIF, P_H5, P_IMM = 0.58, 0.27, 0.12  # the remaining 0.03 are scratch files
TIF_SIZE = 823_569  # one detector frame, as in the dm-list-experiment-files listing
H5_MU, H5_SIGMA = math.log(5_000_000), 0.9  # median 5 MB scan frames
IMM_MU, IMM_SIGMA = 17.8061924, 0.43362899  # median ~54 MB XPCS raw files, fitted
DAT_MU, DAT_SIGMA = math.log(4096), 2.5  # small scratch files, some below 14 B

STATIONS = ("1ID", "8IDI", "6BM", "2BM")
# Types that plausibly run at each station, so rules keyed on type see coherent data.
STATION_TYPES = {
    "1ID": ("HEDM", "SAXS", "WAXS"),
    "8IDI": ("XPCS",),
    "6BM": ("EDD", "TOMO"),
    "2BM": ("TOMO",),
}
SURNAMES = (
    "Smith", "Wilson", "Brown", "Johnson", "Jones", "Williams", "Taylor", "Evans",
    "Davies", "Wilkinson", "Thomas", "Roberts", "Walker", "Wright", "Robinson", "Thompson",
    "White", "Hughes", "Edwards", "Green", "Hall", "Wood", "Harris", "Martin", "Jackson",
    "Clarke", "Lewis", "Clark", "Turner", "Hill", "Scott", "Cooper", "Morris", "Ward",
    "Moore", "King", "Watson", "Baker", "Harrison", "Morgan", "Patel", "Young", "Allen",
    "Mitchell", "James", "Anderson", "Phillips", "Lee", "Bell", "Parker", "Nguyen", "Chen",
    "Kumar", "Garcia", "Mueller", "Rossi", "Novak", "Sato", "Kim", "Ivanov",
)  # fmt: skip
DESCRIPTIONS = (
    "Pressure Induced Dynamics in Colloidal Suspensions",
    "Study of Nanocrystal Lattices",
    "Lipid Degradation Studies",
    "Cryogenic Solvents in Real Environments",
    "Polymer Time Correlations",
    "PDF Solvent Measurements",
    "Temperature Variant Superconductor Analysis",
    "DNA Degradation Probes",
    "X-ray Measurements of Biological Surfactants",
    "Micro-diffraction of Porous Building Materials",
    "Nano-composite Materials Under Stress",
    "Rare Earth Ions Near Interfaces",
    "Grain Growth in Additively Manufactured Alloys",
    "Battery Electrode Cycling In Situ",
)
SAMPLES = ("colloid", "silica", "latex", "gel", "polymer", "glass", "Ti64", "In718", "bone")
EXPOSURES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Experiments start in [WINDOW_START, WINDOW_END) and end before WINDOW_END, whatever
# --now is: --now only decides which settled files also have a tape copy, so plans at
# different --at times can be benchmarked on the same data.
WINDOW_START = calendar.timegm((2017, 1, 1, 0, 0, 0))
WINDOW_END = calendar.timegm((2026, 11, 15, 0, 0, 0))
TAPE_AFTER = 90 * 86400  # settled files of experiments ended longer ago are on tape
RUNNING_SHARE = 0.10  # newest ~1 in 10 experiments (at least one) have endDate null
WRITE_RATE = 200e6  # bytes/s: modification time trails creation by the write time

EXAMPLE = """\
example:
  python bench/gen_catalog.py --files 1000000 --out /tmp/catalog-1m.jsonl
  python bench/gen_catalog.py --files 5000 --needing-action 0.25 --seed 7 --out - | head

the achieved size statistics, lines written and seconds go to stderr.
"""


@dataclass(frozen=True, slots=True)
class Experiment:
    """One experiment and the facts its file records need."""

    name: str
    station: str
    start: int  # epoch seconds
    end: int  # planned end, epoch seconds (files are timed within [start, end))
    running: bool  # endDate null in the record
    n_files: int
    record: dict[str, object]


def iso(t: float) -> str:
    """Format epoch seconds as ISO 8601 UTC with Z, the form the spec examples use."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def parse_now(text: str) -> int:
    """Parse ``--now`` (ISO 8601, Z or offset) to epoch seconds; argparse type."""
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--now needs a timezone (e.g. Z): {text!r}")
    return int(dt.timestamp())


def share_arg(text: str) -> float:
    """argparse type for a share in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0..1: {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type for counts; accepts 1_000_000 and 1,000,000 for readability."""
    value = int(text.replace(",", "").replace("_", ""))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def stations_arg(text: str) -> tuple[str, ...]:
    """argparse type for a comma-separated subset of STATIONS, kept in STATIONS order
    so the experiment layout does not depend on how the list was written."""
    names = {n.strip() for n in text.split(",") if n.strip()}
    unknown = sorted(names - set(STATIONS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"stations are some of {', '.join(STATIONS)}, not {text!r}"
        )
    return tuple(s for s in STATIONS if s in names)


def make_experiments(
    rng: random.Random, n_files: int, per_experiment: int, stations: tuple[str, ...] = STATIONS
) -> list[Experiment]:
    """Lay out ceil(N / per_experiment) experiments chronologically over the window.

    Each experiment gets its own time slot so that dates spread evenly over 2017..2026
    whatever N is; the last one gets the remainder of the files. The list is O(N / 169k)
    long, so keeping it in memory does not make memory grow with N in practice.
    """
    count = -(-n_files // per_experiment) if n_files else 0
    slot = (WINDOW_END - WINDOW_START) / max(count, 1)
    n_running = max(1, round(count * RUNNING_SHARE)) if count else 0
    drafts: list[tuple[int, int]] = []
    for k in range(count):
        duration = rng.randint(2 * 24, 14 * 24) * 3600  # 2-14 days, whole hours
        start = WINDOW_START + k * slot + rng.random() * max(slot - duration, 0)
        start = min(int(start) // 3600 * 3600, WINDOW_END - duration)
        drafts.append((start, duration))
    drafts.sort()

    used: set[str] = set()
    experiments: list[Experiment] = []
    for k, (start, duration) in enumerate(drafts):
        station = stations[k % len(stations)]
        tm = time.gmtime(start)
        suffix = f"-{MONTHS[tm.tm_mon - 1]}{tm.tm_year % 100:02d}"
        name = ""
        for _ in range(20):  # Smith-Mar18: surname + month + 2-digit year, unique
            name = rng.choice(SURNAMES) + suffix
            if name not in used:
                break
        base, n = name, 2
        while name in used:
            name = f"{base}{n}"  # e.g. Smith-Mar182 once 20 surnames all collided
            n += 1
        used.add(name)

        users: list[str] = []
        n_users = rng.randint(2, 6)
        while len(users) < n_users:
            user = f"d{rng.randint(10000, 99999)}"  # badge-number style account
            if user not in users:
                users.append(user)
        running = k >= count - n_running
        end = start + duration
        n = per_experiment if k < count - 1 else n_files - per_experiment * (count - 1)
        record: dict[str, object] = {
            "record": "experiment",
            "name": name,
            "station": station,
            "experimentType": rng.choice(STATION_TYPES[station]),
            "startDate": iso(start),
            "endDate": None if running else iso(end),
            "users": users,
            "esafId": 180000 + 40 * k + rng.randrange(40),  # increasing like real ESAFs
            "description": rng.choice(DESCRIPTIONS),
        }
        experiments.append(Experiment(name, station, start, end, running, n, record))
    return experiments


@dataclass(slots=True)
class Stats:
    """Running totals, so statistics need no second pass and no per-file storage."""

    count: int = 0
    total: int = 0
    total_sq: int = 0  # exact integers: float sums of squares lose precision at 1e6+
    smallest: int = DM_MAX + 1
    largest: int = 0
    needing_action: int = 0
    on_tape: int = 0

    def add(self, size: int) -> None:
        """Account one file size."""
        self.count += 1
        self.total += size
        self.total_sq += size * size
        self.smallest = min(self.smallest, size)
        self.largest = max(self.largest, size)


@dataclass(frozen=True, slots=True)
class Settled:
    """Where a settled file's verified replicas are, beyond ``voyager``."""

    recent_copy: str | None = None  # also here while the experiment is recent
    recent_days: float = 180.0
    scratch_days: float | None = None  # scratch only in experiments younger than this


def file_records(
    rng: random.Random,
    exp: Experiment,
    seed: int,
    share: float,
    now: int,
    stats: Stats,
    owed: list[float],
    settled: Settled = Settled(),
) -> Iterator[dict[str, object]]:
    """Yield the file records of one experiment, in acquisition order.

    Files come in scans (a sample and exposure each); each file is a tif frame, an h5
    frame of the current scan, an imm raw file or a scratch file, with sizes drawn per
    kind (see the constants). Which files need action is decided by a hash of the seed
    and layout path, fed through error diffusion (``owed`` carries the running
    difference between the wanted and the chosen count), so the choice looks random but
    the share is exact to within one file for any N. Where scratch is not written
    (``settled.scratch_days``), the same draw picks among the other kinds in their
    proportions, so the random stream, and with it every other choice, stays the same.
    """
    prefix = f"{exp.station}/{exp.name}/"
    daq = f"daq-{exp.station.lower()}"
    on_tape = not exp.running and exp.end < now - TAPE_AFTER
    recent = exp.running or exp.end > now - settled.recent_days * 86400
    recent_copy = settled.recent_copy if recent else None
    no_scratch = settled.scratch_days is not None and exp.start < now - settled.scratch_days * 86400
    kinds = P_TIF + P_H5 + P_IMM if no_scratch else 1.0
    span = exp.end - exp.start
    n = exp.n_files
    gauss, rand, randint = rng.gauss, rng.random, rng.randint
    tif = imm = dat = h5 = scan = left_in_scan = 0
    sample, exposure = "", 0.0
    for i in range(n):
        if left_in_scan == 0:
            scan += 1
            h5 = 0
            left_in_scan = randint(100, 3000)
            if not sample or rand() < 0.3:
                sample = f"{rng.choice(SAMPLES)}-{randint(1, 40)}"
            exposure = rng.choice(EXPOSURES)
        left_in_scan -= 1

        u = rand() * kinds
        if u < P_TIF:
            tif += 1
            path = f"pix/macimg_{tif:06d}.tif"
            size = TIF_SIZE
        elif u < P_TIF + P_H5:
            h5 += 1
            path = f"scan{scan:04d}/frame_{h5:06d}.h5"
            size = int(math.exp(gauss(H5_MU, H5_SIGMA)) + 0.5)
        elif u < P_TIF + P_H5 + P_IMM:
            imm += 1
            path = f"raw/xpcs_{imm:04d}.imm"
            size = int(math.exp(gauss(IMM_MU, IMM_SIGMA)) + 0.5)
        else:
            dat += 1
            path = f"scratch/tmp_{dat:04d}.dat"
            size = int(math.exp(gauss(DAT_MU, DAT_SIGMA)) + 0.5)
        size = DM_MIN if size < DM_MIN else DM_MAX if size > DM_MAX else size
        stats.add(size)

        layout = prefix + path
        digest = hashlib.md5(f"{seed}:{layout}".encode()).digest()
        created = exp.start + (i + rand()) * span / n
        modified = min(created + size / WRITE_RATE, exp.end)

        owed[0] += share
        if int.from_bytes(digest[:8]) / 18446744073709551616.0 < owed[0]:
            owed[0] -= 1.0
            stats.needing_action += 1
            replicas: list[dict[str, object]] = [
                {"location": daq, "path": layout, "verified": False}
            ]
        else:
            replicas = [{"location": "voyager", "path": layout, "verified": True}]
            if recent_copy is not None:
                replicas.append({"location": recent_copy, "path": layout, "verified": True})
            if on_tape:
                stats.on_tape += 1
                replicas.append({"location": "tape", "path": layout, "verified": True})
        yield {
            "record": "file",
            "experimentName": exp.name,
            "experimentFilePath": path,
            "fileSize": size,
            "md5Sum": digest.hex(),
            "fileCreationTime": round(created, 3),
            "fileModificationTime": round(modified, 3),
            "replicas": replicas,
            "sample": sample,
            "scanId": scan,
            "exposureTime": exposure,
        }


def generate(args: argparse.Namespace, out: IO[bytes]) -> tuple[int, int, Stats, int]:
    """Write the whole catalog; return (lines, bytes, size stats, experiment count)."""
    rng = random.Random(args.seed)
    experiments = make_experiments(rng, args.files, args.files_per_experiment, args.stations)
    settled = Settled(args.recent_copy, args.recent_days, args.scratch_days)
    stats = Stats()
    owed = [0.0]
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    lines = written = 0
    batch: list[bytes] = []
    batch.extend(dumps(exp.record, option=newline) for exp in experiments)
    for exp in experiments:
        records = file_records(
            rng, exp, args.seed, args.needing_action, args.now, stats, owed, settled
        )
        for rec in records:
            batch.append(dumps(rec, option=newline))
            if len(batch) >= 8192:  # one write per batch: far fewer calls than per line
                chunk = b"".join(batch)
                out.write(chunk)
                lines += len(batch)
                written += len(chunk)
                batch.clear()
    chunk = b"".join(batch)
    out.write(chunk)
    lines += len(batch)
    written += len(chunk)
    out.flush()
    return lines, written, stats, len(experiments)


def report(
    lines: int, written: int, stats: Stats, n_exp: int, seconds: float, share: float
) -> None:
    """Print achieved figures next to the DM reference figures, on stderr."""
    err = sys.stderr
    if stats.count:
        mean = stats.total / stats.count
        var = max(stats.total_sq / stats.count - mean * mean, 0.0)
        print(
            f"files {stats.count:,}  mean {mean:.2f} B  std {math.sqrt(var):.0f} B  "
            f"min {stats.smallest} B  max {stats.largest} B  total {stats.total:.5e} B",
            file=err,
        )
        print(
            f"DM Smith-Mar18: files {DM_N_FILES:,}  mean {DM_MEAN:.2f} B  std {DM_STD:.0f} B  "
            f"min {DM_MIN} B  max {DM_MAX} B  total 1.63133e+12 B",
            file=err,
        )
        print(
            f"needing action {stats.needing_action:,} "
            f"({stats.needing_action / stats.count:.4%}, asked {share:.4%})  "
            f"with tape copy {stats.on_tape:,}  experiments {n_exp}",
            file=err,
        )
    rate = lines / seconds if seconds else 0.0
    print(
        f"wrote {lines:,} lines, {written:,} bytes in {seconds:.1f} s ({rate:,.0f} lines/s)",
        file=err,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, generate, report; exit status 0 on success."""
    parser = argparse.ArgumentParser(
        prog="gen_catalog.py",
        description="Write a beamline-shaped jsonl catalog (experiments, then files) "
        "for policyd benchmarks. Deterministic for identical arguments.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="output file, - = stdout")
    parser.add_argument(
        "--files", type=non_negative_int, default=1_000_000, metavar="N",
        help="number of file records (default 1,000,000)",
    )  # fmt: skip
    parser.add_argument(
        "--files-per-experiment", type=non_negative_int, default=DM_N_FILES, metavar="N",
        help=f"files per experiment; the last gets the remainder (default {DM_N_FILES})",
    )  # fmt: skip
    parser.add_argument(
        "--needing-action", type=share_arg, default=0.10, metavar="SHARE",
        help="share of files with only an unverified DAQ replica (default 0.10)",
    )  # fmt: skip
    parser.add_argument(
        "--now", type=parse_now, default=parse_now("2026-11-24T08:00:00Z"), metavar="TIME",
        help="settled files of experiments ended >90 days before TIME also get a tape "
        "replica (default 2026-11-24T08:00:00Z; dates do not depend on it)",
    )  # fmt: skip
    parser.add_argument(
        "--stations", type=stations_arg, default=STATIONS, metavar="LIST",
        help=f"comma-separated stations, a subset of {','.join(STATIONS)} (default all)",
    )  # fmt: skip
    parser.add_argument(
        "--recent-copy", metavar="LOCATION",
        help="settled files of experiments running or ended less than --recent-days "
        "before --now also have a verified replica on LOCATION (default none)",
    )  # fmt: skip
    parser.add_argument(
        "--recent-days", type=float, default=180.0, metavar="DAYS",
        help="how recent --recent-copy means (default 180)",
    )  # fmt: skip
    parser.add_argument(
        "--scratch-days", type=float, metavar="DAYS",
        help="write scratch files only in experiments started less than DAYS before "
        "--now, as if a site expired older scratch (default: in every experiment)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    if args.files_per_experiment < 1:
        parser.error("--files-per-experiment must be >= 1")

    began = time.perf_counter()
    try:
        if args.out == "-":
            lines, written, stats, n_exp = generate(args, sys.stdout.buffer)
        else:
            with open(args.out, "wb", buffering=1 << 20) as out:
                lines, written, stats, n_exp = generate(args, out)
    except BrokenPipeError:
        # e.g. `| head`: the reader has enough; silence the flush at interpreter exit.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    report(lines, written, stats, n_exp, time.perf_counter() - began, args.needing_action)
    return 0


if __name__ == "__main__":
    sys.exit(main())
