"""Data preparation on the data service's store (no gRPC): formats, cleaning, the
group-aware split, statistics and provenance. The gRPC side is in test_data_api.py."""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunewright import hookimpl
from tunewright.core.errors import InvalidArgument
from tunewright.data.cleaning import CleaningOptions, NearDuplicates
from tunewright.data.pii import scrub
from tunewright.data.split import SplitPlan
from tunewright.data.store import DataStore
from tunewright.dataformats import BadRecord
from tunewright.plugin_manager import collect_data_formats, plugin_manager

PAIRS = [
    ("My invoice shows a charge twice this month.", "urgency: medium\nreason: Billing error."),
    ("The whole site is down for all of our users!", "urgency: high\nreason: Outage."),
    ('Can I rename a "project" after créating it?', "urgency: low\nreason: Usage question."),
    ("Exports fail with error 500 since today.\nWe need them for a report.", "urgency: high\nreason: Broken."),
]


@pytest.fixture
def store(tmp_path, tiny_model) -> DataStore:
    return DataStore(tmp_path / "data")


def create(store: DataStore, path: Path, tiny_model: Path, **options):
    data = path.read_bytes()
    file = store.upload_file("", path.name, len(data), hashlib.sha256(data).hexdigest(), [data])
    plan = options.pop("plan", SplitPlan(validation_fraction=0.0, test_fraction=0.25))
    return store.create_dataset("", file.id, "", plan, tokenizer_model=str(tiny_model), **options)


def all_examples(store: DataStore, dataset_id: str) -> list[dict]:
    found = [e for split in ("train", "validation", "test") for e in store.read_dataset(dataset_id, split)]
    return sorted(found, key=lambda e: json.dumps(e, sort_keys=True))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_format_gives_the_same_examples(store, tmp_path, tiny_model):
    chat = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]} for p, c in PAIRS]
    files = {
        "chat": write_jsonl(tmp_path / "chat.jsonl", chat),
        "prompt_completion": write_jsonl(tmp_path / "pc.jsonl", [{"prompt": p, "completion": c} for p, c in PAIRS]),
        "alpaca": write_jsonl(
            tmp_path / "alpaca.jsonl", [{"instruction": p, "input": "", "output": c} for p, c in PAIRS]
        ),
        "sharegpt": write_jsonl(
            tmp_path / "sharegpt.jsonl",
            [{"conversations": [{"from": "human", "value": p}, {"from": "gpt", "value": c}]} for p, c in PAIRS],
        ),
    }
    with open(tmp_path / "table.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ticket", "triage"])
        writer.writerows(PAIRS)
    pq.write_table(pa.table({"ticket": [p for p, _ in PAIRS], "triage": [c for _, c in PAIRS]}), tmp_path / "t.parquet")
    mapping = {"prompt": "ticket", "completion": "triage"}
    made = {name: create(store, path, tiny_model) for name, path in files.items()}
    made["csv"] = create(store, tmp_path / "table.csv", tiny_model, column_mapping=mapping)
    made["parquet"] = create(store, tmp_path / "t.parquet", tiny_model, column_mapping=mapping)

    expected = sorted(chat, key=lambda e: json.dumps(e, sort_keys=True))
    for name, dataset in made.items():
        assert all_examples(store, dataset.id) == expected, name
    assert {name: d.format for name, d in made.items()} == {
        "chat": "chat",
        "prompt_completion": "prompt_completion",
        "alpaca": "alpaca",
        "sharegpt": "sharegpt",
        "csv": "prompt_completion",
        "parquet": "prompt_completion",
    }
    assert made["csv"].details["reader"] == "csv" and made["csv"].details["column_mapping"] == mapping
    # Provenance: the source's sha256, the format, the options and the seed are recorded.
    assert made["chat"].details["source_sha256"] == hashlib.sha256(files["chat"].read_bytes()).hexdigest()
    assert made["chat"].details["cleaning"]["near_duplicates"] == "group" and made["chat"].split_seed == 0


def test_text_files_and_text_records_give_the_same_examples(store, tmp_path, tiny_model):
    paragraphs = ["First document,\nwith two lines.", 'Second document: ünïcode and "quotes".', "Third."]
    (tmp_path / "corpus.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": p} for p in paragraphs])
    from_txt = create(store, tmp_path / "corpus.txt", tiny_model, plan=SplitPlan(0.0, 0.0))
    from_jsonl = create(store, tmp_path / "corpus.jsonl", tiny_model, plan=SplitPlan(0.0, 0.0))
    assert from_txt.format == from_jsonl.format == "text"
    assert (
        all_examples(store, from_txt.id)
        == all_examples(store, from_jsonl.id)
        == sorted(({"text": p} for p in paragraphs), key=lambda e: json.dumps(e, sort_keys=True))
    )
    stats = from_txt.details["stats"]["train"]
    # Text carries the loss on every token.
    assert stats["turns"] == 3 and stats["loss_tokens"] == stats["tokens"] > 0


@pytest.mark.parametrize(
    ("name", "content", "mapping", "field", "words"),
    [
        ("a.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p2"}], {}, "line 2: completion", "missing"),
        (
            "a.jsonl",
            [{"instruction": "i", "output": "o"}, {"instruction": "i", "output": 3}],
            {},
            "line 2: output",
            "string",
        ),
        (
            "a.jsonl",
            [
                {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
            ],
            {},
            "line 2: conversations[1].from",
            "human, gpt",
        ),
        (
            "a.csv",
            [["q", "a"], ["q2", ""]],
            {"prompt": "question", "completion": "answer"},
            "row 2: completion",
            "empty",
        ),
        (
            "a.parquet",
            [["q", "a"], ["", "a"]],
            {"prompt": "question", "completion": "answer"},
            "row 2: prompt",
            "empty",
        ),
    ],
)
def test_bad_records_are_named_by_line_or_row(store, tmp_path, tiny_model, name, content, mapping, field, words):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        write_jsonl(path, content)
    elif name.endswith(".csv"):
        with open(path, "w", newline="") as handle:
            csv.writer(handle).writerows([["question", "answer"], *content])
    else:
        pq.write_table(pa.table({"question": [r[0] for r in content], "answer": [r[1] for r in content]}), path)
    with pytest.raises(InvalidArgument) as caught:
        create(store, path, tiny_model, column_mapping=mapping)
    assert any(v.field == field and words in v.description for v in caught.value.violations), caught.value.violations
    assert not list((store.root / "datasets").iterdir()), "a refused file leaves nothing behind"


def test_an_unknown_format_and_a_file_of_no_known_format_are_refused(store, tmp_path, tiny_model):
    path = write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(InvalidArgument) as caught:
        create(store, path, tiny_model)
    assert caught.value.reason == "UNKNOWN_FORMAT" and "column_mapping" in caught.value.message
    with pytest.raises(InvalidArgument) as caught:
        create(store, path, tiny_model, format_name="tickets")
    assert caught.value.reason == "UNKNOWN_FORMAT" and "sharegpt" in caught.value.message
    # Mapped, the same file is prompt/completion.
    dataset = create(store, path, tiny_model, column_mapping={"prompt": "question", "completion": "answer"})
    assert dataset.format == "prompt_completion"


# ---- cleaning

WORDS = [f"w{i:03d}x" for i in range(1000)]
PII_TEXTS = [
    "mail me at jane.doe+tickets@example.co.uk please",
    "call +44 20 7946 0958 tomorrow",
    "card 4111 1111 1111 1111 was charged",
    "refund to GB82 WEST 1234 5698 7654 32 today",
]


def sentence(rng: random.Random, n: int = 30) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def chat_line(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def two_hundred(rng: random.Random) -> tuple[list[dict], dict[str, set[int]]]:
    """200 examples: 80 distinct, 40 distinct holding PII, 50 exact duplicates (case and
    spaces changed) and 30 near duplicates (one word of 30 changed), shuffled. Returns
    the lines and the line numbers of each kind."""
    distinct = [chat_line(sentence(rng), sentence(rng, 5)) for _ in range(80)]
    pii = [
        chat_line(f"{sentence(rng, 15)} {PII_TEXTS[i % 4]} {sentence(rng, 10)}", sentence(rng, 5)) for i in range(40)
    ]
    originals = distinct + pii
    exact, near = [], []
    for i in range(50):
        source = distinct[i]["messages"]
        exact.append(chat_line("  " + source[0]["content"].upper().replace(" ", "   "), source[1]["content"]))
    for i in range(30):
        words = distinct[50 + i]["messages"][0]["content"].split()
        words[rng.randrange(len(words))] = "changed"
        near.append(chat_line(" ".join(words), distinct[50 + i]["messages"][1]["content"]))
    kinds = ["original"] * len(originals) + ["exact"] * 50 + ["near"] * 30
    order = list(range(200))
    rng.shuffle(order)
    # Every copy comes after its original, so the original is the one kept.
    order.sort(key=lambda i: kinds[i] != "original")
    rows = originals + exact + near
    lines = [rows[i] for i in order]
    positions = {"exact": set(), "near": set(), "pii": set()}
    for line_number, i in enumerate(order, start=1):
        if kinds[i] in ("exact", "near"):
            positions[kinds[i]].add(line_number)
        elif 80 <= i < 120:
            positions["pii"].add(line_number)
    return lines, positions


def test_two_hundred_examples_are_cleaned_as_the_report_says(store, tmp_path, tiny_model):
    lines, positions = two_hundred(random.Random(7))
    path = write_jsonl(tmp_path / "dirty.jsonl", lines)
    plan = SplitPlan(validation_fraction=0.1, test_fraction=0.1, seed=3)
    dataset = create(
        store, path, tiny_model, plan=plan, cleaning=CleaningOptions(near_duplicates=NearDuplicates.REMOVE)
    )
    cleaning = dataset.details["stats"]["cleaning"]
    assert cleaning["read"] == 200
    assert cleaning["exact_duplicates_removed"] == 50
    assert cleaning["near_duplicates_removed"] == 30
    assert cleaning["pii_examples"] == 40
    assert cleaning["pii_replacements"] == {"CREDIT_CARD": 10, "EMAIL": 10, "IBAN": 10, "PHONE": 10}
    assert cleaning["leaked_test_examples"] == 0
    assert dataset.example_count == 120 and dataset.split_counts == {"train": 96, "validation": 12, "test": 12}

    report, token = [], ""
    while True:
        page, token = store.read_report(dataset.id, 50, token)
        report += page
        if not token:
            break
    by_kind: dict[str, set[int]] = {}
    for action in report:
        by_kind.setdefault(action["kind"], set()).add(action["line"])
    assert by_kind == {
        "exact_duplicate_removed": positions["exact"],
        "near_duplicate_removed": positions["near"],
        "pii_replaced": positions["pii"],
    }
    for action in report:
        if "duplicate_of" in action:
            original = lines[action["duplicate_of"] - 1]["messages"][1]["content"]
            assert lines[action["line"] - 1]["messages"][1]["content"] == original

    kept = all_examples(store, dataset.id)
    texts = [m["content"] for e in kept for m in e["messages"]]
    assert all(scrub(text)[1] == {} for text in texts), "no detectable PII is left"
    assert not any(re.search(r"@|\d{4} \d{4}|GB82|7946", text) for text in texts)
    assert sum(text.count("<EMAIL>") for text in texts) == 10


def test_duplicate_groups_never_cross_splits(store, tmp_path, tiny_model):
    lines, _ = two_hundred(random.Random(11))
    path = write_jsonl(tmp_path / "dirty.jsonl", lines)
    # Nothing removed: exact and near duplicates stay, each group inside one split.
    options = CleaningOptions(exact_dedupe=False, near_duplicates=NearDuplicates.GROUP, scrub_pii=False)
    for seed in range(3):
        plan = SplitPlan(validation_fraction=0.2, test_fraction=0.2, seed=seed)
        dataset = create(store, path, tiny_model, plan=plan, cleaning=options)
        assert dataset.example_count == 200
        assert dataset.details["stats"]["cleaning"]["near_duplicate_examples"] == 160
        split_of = {}
        for split in ("train", "validation", "test"):
            for example in store.read_dataset(dataset.id, split):
                key = " ".join(example["messages"][1]["content"].split())
                split_of.setdefault(key, set()).add(split)
        assert all(len(splits) == 1 for splits in split_of.values()), "a group crossed splits"
        assert dataset.details["stats"]["cleaning"]["leaked_test_examples"] == 0


def test_statistics_and_the_length_filter(store, tmp_path, tiny_model):
    rng = random.Random(1)
    records = [chat_line(sentence(rng, 5), sentence(rng, 3)) for _ in range(40)]
    records += [chat_line(sentence(rng, 400), "long") for _ in range(2)]
    path = write_jsonl(tmp_path / "lengths.jsonl", records)
    kept = create(store, path, tiny_model, cleaning=CleaningOptions(max_seq_length=256))
    stats = kept.details["stats"]
    assert sum(stats[s]["overlength"] for s in ("train", "validation", "test")) == 2
    assert sum(b["examples"] for b in stats["train"]["length_histogram"]) == stats["train"]["examples"]
    assert 0 < stats["train"]["loss_tokens"] < stats["train"]["tokens"]
    assert stats["train"]["turns"] == 2 * stats["train"]["examples"]
    dropped = create(store, path, tiny_model, cleaning=CleaningOptions(max_seq_length=256, drop_overlength=True))
    assert dropped.example_count == 40 and dropped.details["stats"]["cleaning"]["overlength_removed"] == 2
    report, _ = store.read_report(dropped.id, 100, "")
    assert [a["line"] for a in report if a["kind"] == "overlength_removed"] == [41, 42]
    assert all(a["tokens"] > 256 for a in report if a["kind"] == "overlength_removed")


def test_token_counts_match_the_trainers(store, tmp_path, tiny_model):
    from tunewright.core.basemodel import load_tokenizer
    from tunewright.core.chat import tokenize_for_training

    records = [chat_line(p, c) for p, c in PAIRS]
    records.append(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Two turns?"},
                {"role": "assistant", "content": "Yes."},
                {"role": "user", "content": "Sure?"},
                {"role": "assistant", "content": "Quite sure, 100%."},
            ]
        }
    )
    path = write_jsonl(tmp_path / "t.jsonl", records)
    dataset = create(store, path, tiny_model, plan=SplitPlan(0.0, 0.0))
    tokenizer = load_tokenizer(tiny_model)
    tokenized = [tokenize_for_training(tokenizer, r["messages"], 100_000) for r in records]
    stats = dataset.details["stats"]["train"]
    assert stats["tokens"] == sum(len(t.input_ids) for t in tokenized)
    assert stats["loss_tokens"] == sum(t.trained_tokens for t in tokenized)


class TicketExportPlugin:
    """A team's own format, as a plugin package would add it: its ticketing system's export."""

    name = "ticket_export"
    description = '{"subject": ..., "body": ..., "triage": ...}'
    fields = ("subject", "body", "triage")

    @hookimpl
    def tunewright_register_data_formats(self, registry):
        registry.add_format(self)

    def detect(self, record):
        return {"subject", "triage"} <= set(record)

    def parse(self, record):
        if not isinstance(record.get("triage"), str):
            raise BadRecord([("triage", "must be the agent's triage text")])
        prompt = f"{record['subject']}\n\n{record.get('body', '')}".strip()
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["triage"]}]}


def test_a_plugin_adds_a_format_without_editing_the_data_service(store, tmp_path, tiny_model):
    pm = plugin_manager(load_entrypoints=False)
    pm.register(TicketExportPlugin(), name="ticket-export")
    store.formats = collect_data_formats(pm)
    rng = random.Random(5)
    records = [{"subject": f"Ticket {i}", "body": sentence(rng), "triage": "urgency: high"} for i in range(8)]
    records[0]["body"] = "It broke."
    records[5] = {"subject": "Ticket 5", "triage": None}
    path = write_jsonl(tmp_path / "export.jsonl", records)
    with pytest.raises(InvalidArgument) as caught:
        create(store, path, tiny_model)
    assert [v.field for v in caught.value.violations] == ["line 6: triage"]
    write_jsonl(path, records[:5] + records[6:])
    dataset = create(store, path, tiny_model)
    assert dataset.format == "ticket_export" and dataset.example_count == 7
    assert {"role": "user", "content": "Ticket 0\n\nIt broke."} in [
        e["messages"][0] for e in all_examples(store, dataset.id)
    ]


def test_the_leakage_check_finds_test_examples_whose_group_is_elsewhere(tmp_path):
    from tunewright.data.pipeline import Report, _check_leakage

    work = sqlite3.connect(":memory:")
    work.execute("CREATE TABLE kept (position INTEGER PRIMARY KEY, grp INTEGER, split TEXT)")
    rows = [(1, 1, "train"), (2, 1, "test"), (3, 3, "test"), (4, 4, "test"), (5, 4, "test"), (6, 6, "validation")]
    work.executemany("INSERT INTO kept VALUES (?, ?, ?)", [*rows, (7, 6, "test")])
    report = Report(tmp_path / "report.jsonl")
    assert _check_leakage(work, report) == 2
    report.close()
    lines = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert lines == [{"line": 2, "kind": "leaked_test_example"}, {"line": 7, "kind": "leaked_test_example"}]


def test_normalization_folds_case_and_spaces_but_keeps_message_boundaries():
    from tunewright.data.cleaning import normalized_text

    def chat(*contents: str) -> dict:
        return {"messages": [{"role": r, "content": c} for r, c in zip(("user", "assistant"), contents, strict=True)]}

    assert normalized_text(chat("  Ｈello\tWORLD ", "ok")) == normalized_text(chat("hello world", "OK"))
    assert normalized_text(chat("a assistant b", "c")) != normalized_text(chat("a", "b assistant c"))
