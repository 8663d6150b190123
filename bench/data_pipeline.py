"""Preparing a dataset: the data service's pipeline against the plain Hugging Face `datasets`
pipeline a user would write for the same steps, at 100k and 1M examples, in one run.

    .venv/bin/python bench/data_pipeline.py [--sizes 100000 1000000] [--json FILE] [--keep-data]
        [--timeout 600] [--defaults-max 100000] [--num-proc 2]

The input is synthetic support-ticket chats in JSONL (a user message of about 40-80 words and
an assistant reply of 10-20 words, no system message), made from a fixed seed: about 10%
are copies of an earlier example, exact or differing only in case or whitespace, and about
1% run past 512 tokens. Generating the file is not timed. The same file goes through the
same steps on both sides: load, exact dedupe (the example's roles and contents, Unicode
NFKC, case folded, whitespace collapsed), the length in tokens with SmolLM2-135M's tokenizer
and chat template, dropping examples over 512 tokens, an 80/10/10 split, and the splits
written out as JSONL.

- ``ours``: ``tunewright.data.store.DataStore`` in the process, no gRPC: the file is uploaded
  (a streamed copy with its sha256 checked; timed apart, in the "upload" column, and not in
  the ratio), then ``create_dataset`` with exact dedupe on, near duplicates off, PII
  scrubbing off and over-length examples dropped; only ``create_dataset`` is timed.
- ``ours, defaults``: the same with ``CleaningOptions()`` but dropping over-length examples
  (PII scrubbing and MinHash near-duplicate grouping on): more work than the reference
  does, shown for information, at sizes up to ``--defaults-max`` only.
- ``reference``: ``datasets.load_dataset("json", ...)`` with a fresh cache folder, a batched
  ``.filter`` that keeps the first of each normalized text with a Python set of hashes
  (``datasets`` has no dedupe of its own), a batched ``.map`` counting tokens with the
  transformers tokenizer's ``apply_chat_template(tokenize=True)``, a batched ``.filter`` on
  that count, ``train_test_split(test_size=0.2, seed=0)`` and the 20% split again in halves,
  then ``.to_json`` of each split. Default ``num_proc`` (one process); ``--num-proc 2`` adds a
  row with ``num_proc=2`` for the token count and the length filter (the dedupe filter
  stays in one process: a set is not shared between workers). On 2 cores it was slower
  (the Rust tokenizer already encodes a batch on both), so it is not run by default.

Every measurement is a fresh process. Both sides load the tokenizer (the same folder,
``resolve_tokenizer`` in the model cache, converted by an untimed warm-up dataset first)
before the clock starts. Peak RSS is the process's ``ru_maxrss`` as ``os.wait4`` returns it
(for ``num_proc=2``, the largest of the process and its workers, not their sum); "before" is
the process's peak just before the clock started (interpreter, imports, tokenizer), and
"peak anon" is the largest anonymous (non file-backed) RSS of the process sampled every
20 ms, since ``datasets`` memory-maps its Arrow files and their pages count in RSS. A run
still going after ``--timeout`` seconds is stopped and shown as such, with its peak so far.
The kept totals of ours and the reference must agree (the same count after dedupe, and
within a few examples after the length filter), or the run fails; the split sizes differ
by rounding (``train_test_split`` rounds the 20% up, ours rounds each 10%).

A benchmark, not a test: figures go in bench/README.md, with the command.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_TOKENS = 512
SEED = 0
# Kept totals of the two pipelines may differ by this many examples before the run fails.
KEPT_TOLERANCE = 5

# The synthetic tickets.
PRODUCTS = [
    "the dashboard",
    "the mobile app",
    "the billing page",
    "the reports module",
    "the API",
    "the calendar sync",
    "the file uploads",
    "single sign-on",
    "the export tool",
    "the admin console",
    "the Slack integration",
    "the search",
    "the invoice generator",
    "two-factor login",
    "the webhooks",
    "the CSV import",
    "the team inbox",
    "the analytics view",
    "the password reset",
    "the desktop client",
]
SYMPTOMS = [
    "keeps timing out after {n} seconds",
    "shows a blank white page",
    "returns error {code}",
    "logs everyone out every few minutes",
    "is missing data from {day}",
    "loads extremely slowly",
    "crashes as soon as I open it",
    "shows the wrong totals",
    "sends duplicate notifications",
    "won't accept my changes",
    "stopped syncing since {day}",
    "spins forever and never finishes",
    "shows an 'access denied' message",
    "charges us twice for the same month",
    "drops attachments over {n} MB",
]
CONTEXT = [
    "We are on the {plan} plan with about {users} users.",
    "This started right after your update on {day}.",
    "I tried clearing the cache and a different browser ({browser}) but nothing changed.",
    "Our whole {team} team depends on this every morning.",
    "It only happens for some of our accounts, not all.",
    "A colleague in the {city} office sees the same thing.",
    "We already restarted everything twice.",
    "I checked the status page and it says all systems are operational.",
    "The problem is intermittent, maybe one request in {n} fails.",
    "Nothing in our setup changed recently.",
    "We migrated from the old version last {day}.",
    "I attached screenshots to the previous ticket #{ticket}.",
    "Our account was created about {n} months ago.",
    "We use {browser} on Windows and macOS.",
    "Honestly this is getting frustrating, it is the {nth} time this month.",
    "The café branch in {city} reported it first, then the rest of us.",
]
IMPACT = [
    "Right now nobody can work and customers are waiting.",
    "It is annoying but we have a workaround.",
    "We have a board meeting on {day} and need the numbers before then.",
    "Payroll runs tomorrow, so this is urgent for us.",
    "No rush, just wanted to let you know.",
    "Could you at least tell us whether you are aware of it?",
    "We are losing orders every hour this continues.",
    "It is not blocking anything yet.",
    "Our clients noticed and are asking questions.",
    "Please advise on the next steps.",
]
ASKS = [
    "Can you look into it?",
    "Is there a known fix?",
    "What should we try next?",
    "Please escalate this.",
    "Can someone call me back?",
    "Any ETA would help.",
    "Thanks in advance for your help.",
    "Let me know if you need logs.",
    "Should we roll back?",
    "Can you confirm it's on your side?",
]
OPENERS = ["Hi,", "Hello team,", "Hi there,", "Good morning,", "Hey,", "Dear support,", ""]
CONTACTS = [
    "You can reach me at {name}.{surname}@example.com.",
    "My direct line is (555) {a}-{b}.",
    "Email me at {name}@{surname}-corp.example.org if that is easier.",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the weekend", "last week", "yesterday"]
PLANS = ["Starter", "Team", "Business", "Enterprise", "Nonprofit"]
BROWSERS = ["Chrome", "Firefox", "Safari", "Edge", "Brave"]
TEAMS = ["finance", "sales", "support", "marketing", "ops", "engineering", "HR", "légal"]
CITIES = ["Berlin", "Lisbon", "Toronto", "Austin", "Osaka", "Nairobi", "São Paulo", "Kraków", "Dublin"]
NAMES = ["anna", "ben", "chloe", "diego", "elif", "farid", "grace", "hiro", "ines", "jonas", "kemi", "lena"]
SURNAMES = ["smith", "garcia", "nguyen", "muller", "okafor", "rossi", "tanaka", "novak", "silva", "kowalski"]
NTH = ["second", "third", "fourth", "fifth"]
URGENCY = ["high", "medium", "low"]
REASONS = [
    "the whole team is blocked",
    "customers are directly affected",
    "there is a working workaround",
    "it is a usage question",
    "money is being charged wrongly",
    "a deadline depends on it",
    "only one user is affected",
    "data may be missing",
    "it happens intermittently",
    "security could be at risk",
]
REASON_TAILS = [
    "and it started after the latest release",
    "so it needs a fix today",
    "but nothing is lost yet",
    "which can wait for the normal queue",
    "and several accounts report it",
    "so escalate to engineering",
    "and the customer asked for a call back",
    "while the rest of the product works",
]
FILLER_TEXT = (
    "Here is everything we saw in detail, step by step, including what each person on the team did, "
    "which pages they opened, what the screen showed and how long they waited before trying again."
)
FILLER = FILLER_TEXT.split()


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        n=rng.randint(2, 120), code=rng.choice([400, 401, 403, 404, 409, 429, 500, 502, 503]),
        day=rng.choice(DAYS), plan=rng.choice(PLANS), users=rng.randint(3, 900), browser=rng.choice(BROWSERS),
        team=rng.choice(TEAMS), city=rng.choice(CITIES), ticket=rng.randint(10000, 99999), nth=rng.choice(NTH),
        name=rng.choice(NAMES), surname=rng.choice(SURNAMES), a=rng.randint(200, 999), b=rng.randint(1000, 9999),
    )  # fmt: skip


def ticket(rng: random.Random, long: bool) -> list[dict[str, str]]:
    """One chat: the user's ticket (40-80 words, or 450-650 when ``long``) and the triage reply."""
    target = rng.randint(450, 650) if long else rng.randint(40, 80)
    parts = [rng.choice(OPENERS), f"{rng.choice(PRODUCTS).capitalize()} {_fill(rng.choice(SYMPTOMS), rng)}."]
    words = sum(len(p.split()) for p in parts)
    pools = [CONTEXT, CONTEXT, IMPACT, ASKS]
    while words < target:
        if rng.random() < 0.02:
            sentence = _fill(rng.choice(CONTACTS), rng)
        elif long and rng.random() < 0.3:
            sentence = " ".join(rng.choices(FILLER, k=rng.randint(8, 20))).capitalize() + "."
        else:
            sentence = _fill(rng.choice(rng.choice(pools)), rng)
        parts.append(sentence)
        words += len(sentence.split())
    user = " ".join(p for p in parts if p)
    reason = f"{rng.choice(REASONS)} {rng.choice(REASON_TAILS)}"
    while len(reason.split()) < rng.randint(8, 16):
        reason += f", {rng.choice(REASONS)}"
    reply = f"urgency: {rng.choice(URGENCY)}\nreason: {reason.capitalize()}."
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def variant(messages: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    """A copy of an earlier chat, as it is or differing in case or whitespace only."""
    user, reply = messages[0]["content"], messages[1]["content"]
    kind = rng.random()
    if kind < 0.25:
        user = user.lower() if rng.random() < 0.5 else user.upper()
    elif kind < 0.5:
        user = "  " + user.replace(". ", ".  ", 3).replace(" ", "\n", 1) + " "
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def generate(path: Path, n: int, seed: int = SEED) -> dict:
    """Writes ``n`` examples to ``path``, streaming; the first n of a larger file are the same."""
    rng = random.Random(seed)
    recent: list[list[dict[str, str]]] = []
    copies = long = 0
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(n):
            if recent and rng.random() < 0.10:
                messages = variant(rng.choice(recent), rng)
                copies += 1
            else:
                is_long = rng.random() < 0.01
                long += is_long
                messages = ticket(rng, is_long)
                if len(recent) < 20_000:
                    recent.append(messages)
                else:
                    recent[rng.randrange(len(recent))] = messages
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return {"examples": n, "copies_written": copies, "long_written": long, "bytes": path.stat().st_size}


# Measuring a child process.


class AnonPeak:
    """The largest RssAnon of this process, sampled from /proc every 20 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_in_child(run: str, data: Path, work: Path, args: argparse.Namespace, extra: list[str] = ()) -> dict:
    """``this script --child RUN`` in a fresh process; its RESULT line plus the peak RSS
    that ``os.wait4`` reports for it. A run still going after ``args.timeout`` seconds is
    stopped (with its workers) and reported as such, with its peak so far."""
    command = [sys.executable, __file__, "--child", run, "--data", str(data), "--work", str(work)]
    command += ["--cache", str(args.cache), *extra]
    print(f"  running {run} on {data.name} ...", file=sys.stderr, flush=True)
    log = work.with_suffix(".log")
    env = {**os.environ, "TUNEWRIGHT_MODEL_CACHE": str(args.cache)}
    began = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
        timer = threading.Timer(args.timeout, os.killpg, (process.pid, signal.SIGKILL))
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - began
    peak = usage.ru_maxrss * 1024
    text = log.read_text()
    if process.returncode == -signal.SIGKILL and elapsed >= args.timeout:
        print(f"  {run} stopped after {args.timeout:.0f} s", file=sys.stderr, flush=True)
        log.unlink()
        return {"timed_out": True, "seconds": float(args.timeout), "peak_rss_bytes": peak}
    line = next((row for row in text.splitlines() if row.startswith("RESULT ")), None)
    if process.returncode != 0 or line is None:
        sys.exit(f"{run} failed (exit {process.returncode}):\n{text[-4000:]}")
    log.unlink()
    return {**json.loads(line.removeprefix("RESULT ")), "peak_rss_bytes": peak}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def child_ours(args: argparse.Namespace, defaults: bool) -> dict:
    from tunewright.core.basemodel import DEFAULT_BASE_MODEL
    from tunewright.data.cleaning import CleaningOptions, NearDuplicates
    from tunewright.data.split import SplitPlan
    from tunewright.data.store import DataStore

    store = DataStore(args.work)
    store.token_counter(DEFAULT_BASE_MODEL)  # loads the tokenizer, untimed
    if defaults:
        cleaning = CleaningOptions(max_seq_length=MAX_TOKENS, drop_overlength=True)
    else:
        cleaning = CleaningOptions(
            exact_dedupe=True,
            near_duplicates=NearDuplicates.OFF,
            scrub_pii=False,
            max_seq_length=MAX_TOKENS,
            drop_overlength=True,
        )

    def chunks():
        with open(args.data, "rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk

    size, digest = args.data.stat().st_size, sha256_of(args.data)
    anon = AnonPeak()
    before = maxrss_bytes()
    began = time.perf_counter()
    file = store.upload_file("", args.data.name, size, digest, chunks())
    uploaded = time.perf_counter()
    dataset = store.create_dataset("", file.id, "", SplitPlan(0.1, 0.1, SEED), cleaning=cleaning)
    seconds = time.perf_counter() - uploaded
    cleaned = dataset.details["stats"]["cleaning"]
    return {
        "seconds": seconds,
        "upload_seconds": uploaded - began,
        "rss_before_bytes": before,
        "anon_peak_bytes": anon.stop(),
        "splits": dataset.split_counts,
        "read": cleaned["read"],
        "after_dedupe": cleaned["read"] - cleaned["exact_duplicates_removed"] - cleaned["near_duplicates_removed"],
        "overlength_removed": cleaned["overlength_removed"],
        "cleaning": cleaned,
    }


def normalized(messages: list[dict[str, str]]) -> str:
    """What the reference dedupes on: the service's definition, written out as a user would."""

    def one(text: str) -> str:
        return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()

    return "\x1e".join(f"{m['role']}\x1f{one(m['content'])}" for m in messages)


def child_reference(args: argparse.Namespace) -> dict:
    import datasets
    from datasets import load_dataset

    from tunewright.core.basemodel import DEFAULT_BASE_MODEL, load_tokenizer, resolve_tokenizer

    datasets.disable_progress_bars()
    tokenizer = load_tokenizer(resolve_tokenizer(DEFAULT_BASE_MODEL, args.cache))
    num_proc = args.num_proc or None
    cache, out = args.work / "hf-cache", args.work / "out"
    out.mkdir(parents=True)
    steps: dict[str, float] = {}
    anon = AnonPeak()
    before = maxrss_bytes()
    began = last = time.perf_counter()

    def step(name: str) -> None:
        nonlocal last
        steps[name] = time.perf_counter() - last
        last = time.perf_counter()

    ds = load_dataset("json", data_files=str(args.data), split="train", cache_dir=str(cache))
    read = len(ds)
    step("load")
    seen: set[bytes] = set()

    def first_time(batch):
        keep = []
        for messages in batch["messages"]:
            key = hashlib.blake2b(normalized(messages).encode(), digest_size=16).digest()
            keep.append(key not in seen)
            seen.add(key)
        return keep

    ds = ds.filter(first_time, batched=True)
    after_dedupe = len(ds)
    step("dedupe")

    def count(batch):
        encoded = tokenizer.apply_chat_template(batch["messages"], tokenize=True)
        return {"n_tokens": [len(ids) for ids in encoded["input_ids"]]}

    ds = ds.map(count, batched=True, num_proc=num_proc)
    step("count tokens")
    ds = ds.filter(lambda n: [t <= MAX_TOKENS for t in n], input_columns="n_tokens", batched=True, num_proc=num_proc)
    ds = ds.remove_columns("n_tokens")
    step("length filter")
    parts = ds.train_test_split(test_size=0.2, seed=SEED)
    held = parts["test"].train_test_split(test_size=0.5, seed=SEED)
    splits = {"train": parts["train"], "validation": held["train"], "test": held["test"]}
    step("split")
    for name, split in splits.items():
        split.to_json(out / f"{name}.jsonl", num_proc=num_proc)
    step("write")
    return {
        "seconds": time.perf_counter() - began,
        "steps": steps,
        "rss_before_bytes": before,
        "anon_peak_bytes": anon.stop(),
        "splits": {name: len(split) for name, split in splits.items()},
        "read": read,
        "after_dedupe": after_dedupe,
        "overlength_removed": after_dedupe - len(ds),
        "datasets": datasets.__version__,
    }


def child_warmup(args: argparse.Namespace) -> dict:
    """A small dataset with the default cleaning, so that the tokenizer is converted into the
    model cache (on its first use only) before any run is timed."""
    from tunewright.data.cleaning import CleaningOptions
    from tunewright.data.split import SplitPlan
    from tunewright.data.store import DataStore

    path = args.work / "warmup.jsonl"
    generate(path, 200, seed=SEED + 1)
    store = DataStore(args.work / "store")
    data = path.read_bytes()
    file = store.upload_file("", path.name, len(data), hashlib.sha256(data).hexdigest(), [data])
    has_pii = importlib.util.find_spec("tunewright.data.pii") is not None
    began = time.perf_counter()
    store.create_dataset("", file.id, "", SplitPlan(), cleaning=CleaningOptions(scrub_pii=has_pii))
    return {"seconds": time.perf_counter() - began, "pii": has_pii}


def child(args: argparse.Namespace) -> dict:
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child == "warmup":
        return child_warmup(args)
    if args.child == "ours":
        return child_ours(args, defaults=False)
    if args.child == "ours-defaults":
        return child_ours(args, defaults=True)
    if args.child == "reference":
        return child_reference(args)
    raise SystemExit(f"unknown run {args.child}")


# The parent.


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def agree(runs: dict) -> str:
    """Empty when ours and the reference kept the same examples (within KEPT_TOLERANCE),
    else what differs."""
    ours, reference = runs["ours"], runs["reference"]
    if ours.get("timed_out") or reference.get("timed_out"):
        return ""
    if ours["after_dedupe"] == reference["after_dedupe"] and abs(ours["kept"] - reference["kept"]) <= KEPT_TOLERANCE:
        return ""
    return (
        f"ours {ours['after_dedupe']:,} after dedupe, {ours['kept']:,} kept; "
        f"reference {reference['after_dedupe']:,} after dedupe, {reference['kept']:,} kept"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="examples per file")
    parser.add_argument("--defaults-max", type=int, default=100_000, help="largest size for the defaults row")
    parser.add_argument("--num-proc", type=int, default=0, help="also run the reference with this num_proc")
    parser.add_argument("--timeout", type=float, default=600, help="stop a run after this many seconds")
    parser.add_argument("--cache", type=Path, default=REPO / ".tunewright" / "bench-cache", help="model cache")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the files go")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated input files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    args.cache = args.cache.resolve()
    folder = Path(tempfile.mkdtemp(prefix="tunewright-data-bench-", dir=args.tmp))
    # About 575 bytes an example; the input and, at once, either the upload's copy, the
    # working tables and the splits (ours) or the Arrow cache, its mapped copy and the
    # splits (the reference).
    need = max(args.sizes) * 600 * 6
    free = shutil.disk_usage(folder).free
    if free < need:
        shutil.rmtree(folder)
        sys.exit(f"{free / 1e9:.1f} GB free in {args.tmp}, about {need / 1e9:.1f} GB needed")
    has_pii = importlib.util.find_spec("tunewright.data.pii") is not None
    results: dict = {"sizes": {}, "cpus": os.cpu_count(), "timeout_seconds": args.timeout, "notes": []}
    try:
        warm = run_in_child("warmup", folder / "warmup", folder / "warmup", args)
        print(f"warm-up dataset (tokenizer in {args.cache}): {warm['seconds']:.1f} s", file=sys.stderr)
        for size in args.sizes:
            data = folder / f"tickets-{size}.jsonl"
            began = time.perf_counter()
            written = generate(data, size)
            print(
                f"generated {size:,} examples, {written['bytes'] / 1e6:.0f} MB "
                f"({written['copies_written']:,} copies, {written['long_written']:,} long) "
                f"in {time.perf_counter() - began:.0f} s",
                file=sys.stderr,
            )
            plan = [("ours", "ours", []), ("reference", "reference", [])]
            if args.num_proc:
                plan.append((f"reference, num_proc={args.num_proc}", "reference", ["--num-proc", str(args.num_proc)]))
            if size > args.defaults_max:
                pass
            elif has_pii:
                plan.append(("ours, defaults", "ours-defaults", []))
            else:
                results["notes"].append(f"tunewright.data.pii is missing: no defaults row at {size:,}")
            runs: dict[str, dict] = {}
            for name, run, extra in plan:
                work = folder / f"{run}-{size}-{len(runs)}"
                runs[name] = run_in_child(run, data, work, args, extra)
                shutil.rmtree(work, ignore_errors=True)
            reference = runs["reference"]
            for r in runs.values():
                r["examples_per_second"] = size / r["seconds"]
                r["reference_over_this"] = reference["seconds"] / r["seconds"]
                if not r.get("timed_out"):
                    r["kept"] = sum(r["splits"].values())
            results["sizes"][str(size)] = {"generated": written, "runs": runs}
            if not args.keep_data:
                data.unlink()
            if problem := agree(runs):
                print_table(results)
                sys.exit(f"kept totals disagree at {size:,}: {problem}")
        print_table(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        if args.keep_data:
            print(f"input files kept in {folder}", file=sys.stderr)
            for path in folder.iterdir():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def print_table(results: dict) -> None:
    limit = results["timeout_seconds"]
    print(
        f"{results['cpus']} CPUs; at most {MAX_TOKENS} tokens, 80/10/10 split, seed {SEED}; runs stopped after {limit:.0f} s"
    )
    print(
        "| examples | pipeline | seconds | examples/s | reference / this | peak RSS MiB | before MiB | peak anon MiB "
        "| read | after dedupe | over-length dropped | train / validation / test | kept | upload s |"
    )
    print("| --- " * 14 + "|")
    for size, entry in results["sizes"].items():
        for name, r in entry["runs"].items():
            if r.get("timed_out"):
                print(
                    f"| {int(size):,} | {name} | > {limit:.0f} (stopped) | < {r['examples_per_second']:,.0f} "
                    f"| < {r['reference_over_this']:.2f} | {mib(r['peak_rss_bytes'])} so far |" + " |" * 8
                )
                continue
            splits = " / ".join(f"{r['splits'][s]:,}" for s in ("train", "validation", "test"))
            upload = f"{r['upload_seconds']:.1f}" if "upload_seconds" in r else ""
            print(
                f"| {int(size):,} | {name} | {r['seconds']:.1f} | {r['examples_per_second']:,.0f} "
                f"| {r['reference_over_this']:.2f} | {mib(r['peak_rss_bytes'])} | {mib(r['rss_before_bytes'])} "
                f"| {mib(r['anon_peak_bytes'])} | {r['read']:,} | {r['after_dedupe']:,} | {r['overlength_removed']:,} "
                f"| {splits} | {r['kept']:,} | {upload} |"
            )
    for size, entry in results["sizes"].items():
        runs, g = entry["runs"], entry["generated"]
        print(
            f"{int(size):,}: generated {g['bytes'] / 1e6:,.0f} MB with {g['copies_written']:,} copies of earlier "
            f"examples and {g['long_written']:,} long ones"
        )
        reference = runs["reference"]
        if not reference.get("timed_out"):
            print("  reference steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in reference["steps"].items()))
        defaults = runs.get("ours, defaults")
        if defaults and not defaults.get("timed_out"):
            c = defaults["cleaning"]
            print(
                f"  ours, defaults: {c['near_duplicate_examples']:,} examples in near-duplicate groups, "
                f"{c['pii_examples']:,} with PII {c['pii_replacements']}"
            )
    sizes = sorted(results["sizes"], key=int)
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for name, b in results["sizes"][large]["runs"].items():
            a = results["sizes"][small]["runs"].get(name)
            if a is None or a.get("timed_out"):
                continue
            so_far = " (so far: stopped)" if b.get("timed_out") else ""
            print(
                f"{name}: peak RSS at {int(large):,} / at {int(small):,} = "
                f"{b['peak_rss_bytes'] / a['peak_rss_bytes']:.2f}{so_far}"
                + ("" if b.get("timed_out") else f" (peak anon {b['anon_peak_bytes'] / a['anon_peak_bytes']:.2f})")
                + f"; seconds {'> ' if so_far else ''}{b['seconds'] / a['seconds']:.1f}x for "
                f"{int(large) // int(small)}x the examples"
            )
    for note in results["notes"]:
        print(note)


if __name__ == "__main__":
    main()
