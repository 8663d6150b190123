#!/usr/bin/env python3
"""Deterministic generator for the banking-intent classification example.

Writes ``intents.jsonl`` next to this file: 420 synthetic messages from bank
customers, each labelled with one of 12 intents (35 examples each), in OpenAI
chat JSONL format. The assistant answer is the intent name alone.

Standard library only. The output is byte-identical on every run: all
randomness comes from one ``random.Random(SEED)`` and nothing depends on the
clock, the environment or hash ordering.

    python examples/banking_intents/generate.py
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

SEED = 20240612
PER_INTENT = 35
MIN_WORDS, MAX_WORDS = 5, 25
OUT_PATH = Path(__file__).resolve().parent / "intents.jsonl"

SYSTEM = "Classify the customer's message into one banking intent. Answer with the intent name only."

# Slot fillers. Each slot is sampled once per message.
POOLS: dict[str, list[str]] = {
    "amount": ["£40", "$120", "£250", "€75", "$60", "€300", "$35", "£15", "€500", "£90"],
    "city": [
        "Leeds",
        "Bristol",
        "Glasgow",
        "Manchester",
        "Cardiff",
        "Dublin",
        "Lisbon",
        "Madrid",
        "Berlin",
        "Toronto",
        "Boston",
        "Edinburgh",
    ],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "merchant": [
        "Amazon",
        "Tesco",
        "Uber",
        "Netflix",
        "a petrol station",
        "Zara",
        "Deliveroo",
        "an online electronics shop",
        "Ryanair",
        "Apple",
    ],
    "card": ["debit card", "credit card", "Visa card", "Mastercard", "contactless card", "business debit card"],
    "currency": [
        "euros",
        "US dollars",
        "Japanese yen",
        "Swiss francs",
        "Canadian dollars",
        "Turkish lira",
        "Australian dollars",
        "Polish zloty",
    ],
    "payee": [
        "my old gym",
        "a magazine subscription",
        "the phone company",
        "a charity I no longer support",
        "my previous landlord",
        "an insurance policy I cancelled",
        "a streaming service",
    ],
    "loan": [
        "a personal loan",
        "a car loan",
        "a home improvement loan",
        "a debt consolidation loan",
        "a small business loan",
    ],
    "big": ["£3,000", "£7,500", "$10,000", "€12,000", "£15,000", "$25,000", "£30,000"],
    "bill": ["£12", "$9.99", "£35", "€20", "£49", "$15"],
    "place": [
        "at the train station",
        "outside the supermarket",
        "on the high street",
        "at the airport",
        "in the shopping centre",
        "near my office",
    ],
    "person": ["my sister", "my landlord", "a friend", "my son", "a supplier", "my builder"],
    "weeks": ["two weeks", "ten days", "three weeks", "over a month", "nearly a fortnight"],
}

OPENERS = ["Hi.", "Hello.", "Hi there!", "Good morning.", "Hello, quick question.", "Hey!"]
CLOSERS = ["Thanks.", "Thank you!", "Can you help?", "Cheers.", "Thanks in advance.", "Please advise."]

INTENTS: dict[str, list[str]] = {
    "card_lost": [
        "I think I lost my {card} somewhere {place} on {day}.",
        "I can't find my {card} anywhere, I must have dropped it in {city}.",
        "My {card} is missing, I had it on {day} and now it's gone.",
        "Lost my wallet with my {card} in it, please block the card.",
        "I've misplaced my {card}. Can you freeze it before anyone finds it?",
        "Left my {card} in a taxi in {city} and it's lost for good.",
        "How do I block a card I've lost? It was my {card}.",
    ],
    "card_not_arrived": [
        "My new {card} still hasn't arrived and it's been {weeks}.",
        "I ordered a replacement {card} {weeks} ago and nothing has come in the post.",
        "Still waiting for my {card} to be delivered. When will it arrive?",
        "The {card} you said you'd posted on {day} never turned up.",
        "You said my new {card} would reach me in {city} by {day}, but it hasn't arrived.",
        "Where is my new card? The app says it was sent but I haven't received it.",
        "It's been {weeks} and my {card} still hasn't come through the letterbox.",
    ],
    "balance_inquiry": [
        "How much money do I have in my current account right now?",
        "Can you tell me my account balance please?",
        "What's my balance? I need to know before I spend {amount} at {merchant}.",
        "I want to check how much is left in my savings account.",
        "Do I have at least {amount} available in my account today?",
        "How do I see my balance in the app?",
        "What is my available balance after the {day} payments?",
    ],
    "transfer_failed": [
        "My transfer of {amount} to {person} failed and I don't know why.",
        "I tried to send {amount} to {person} on {day} but it was rejected.",
        "The bank transfer I made on {day} bounced back. What went wrong?",
        "Why did my payment of {amount} to {person} not go through?",
        "The app says my transfer to {person} failed. Can you check?",
        "I sent {amount} to an account in {city} and it came back as failed.",
        "Transfer error again, {amount} to {person} keeps getting declined.",
    ],
    "change_pin": [
        "How do I change the PIN on my {card}?",
        "I'd like to set a new PIN for my {card}.",
        "I want a different PIN, the current one is too easy to guess.",
        "Can I change my card PIN at an ATM in {city}?",
        "Is it possible to update my PIN in the app instead of a branch?",
        "Please help me reset the PIN on my {card} to a new number.",
        "I keep forgetting my PIN, so I want to change it to something memorable.",
    ],
    "exchange_rate": [
        "What exchange rate do you give for {currency} today?",
        "If I spend {amount} in {currency}, what rate will you use?",
        "How many {currency} would I get for {amount}?",
        "Going to {city} on {day}. What's your rate for {currency}?",
        "Is your exchange rate for {currency} better than the one at the airport?",
        "I was charged an odd rate converting to {currency}. How is the rate calculated?",
        "Which exchange rate applies when I pay in {currency} with my {card}?",
    ],
    "cancel_direct_debit": [
        "Please cancel the direct debit to {payee}.",
        "How do I stop a direct debit for {payee}?",
        "I want to cancel my direct debit of {bill} a month to {payee}.",
        "Can you stop the direct debit that goes out every {day}? It's for {payee}.",
        "I don't want {payee} to take any more money by direct debit.",
        "Cancel the {bill} direct debit to {payee} before it's collected again.",
        "Where in the app do I cancel a direct debit to {payee}?",
    ],
    "close_account": [
        "I'd like to close my current account with you.",
        "How do I close my account and move my money elsewhere?",
        "Please close my savings account and send the remaining {amount} to my other bank.",
        "I'm moving abroad to {city} and want to shut my account down.",
        "Can I close my joint account online, or do I need to visit a branch?",
        "I no longer need this account. What's the process for closing it?",
        "Please close all my accounts with you, I'm leaving the bank.",
    ],
    "loan_inquiry": [
        "I'm interested in {loan}. What interest rate could I get?",
        "Can I borrow {big} with {loan}, and how long would repayments take?",
        "What do I need to apply for {loan}?",
        "How much could I borrow with {loan} on my salary?",
        "Do you offer {loan}? I'm looking to borrow about {big}.",
        "What are the monthly repayments on {loan} of {big}?",
        "Am I eligible for {loan} if I've only banked with you for a year?",
    ],
    "report_fraud": [
        "There's a payment of {amount} to {merchant} on my account that I didn't make.",
        "Someone has used my {card} without my permission, I see charges from {merchant}.",
        "I want to report fraud: {amount} was taken from my account on {day}.",
        "I got a call pretending to be the bank and now {amount} is missing.",
        "I don't recognise a {amount} transaction in {city}, I've never been there.",
        "I think my account has been hacked, there are transfers I never made.",
        "Unauthorised charges from {merchant} keep appearing on my {card}.",
    ],
    "change_address": [
        "I've moved house to {city}, how do I update my address?",
        "Please change the address on my account, I moved on {day}.",
        "I need to update my home address with the bank.",
        "How do I change my postal address in the app?",
        "We've relocated to {city}. Can you change our address on the joint account?",
        "My address is out of date, I moved {weeks} ago. How do I update it?",
        "Where can I change the address my statements are sent to?",
    ],
    "atm_no_cash": [
        "The ATM {place} didn't give me any cash but took {amount} from my account.",
        "I tried to withdraw {amount} on {day} and the machine gave me nothing.",
        "A cash machine in {city} debited {amount} but no money came out.",
        "The cashpoint said my withdrawal was done but no notes came out.",
        "I was charged {amount} for a withdrawal but the ATM didn't dispense the cash.",
        "The ATM {place} gave me no cash at all, yet {amount} has left my account.",
        "My account shows a {amount} ATM withdrawal in {city}, but I never got the money.",
    ],
}


def make_message(templates: list[str], rng: random.Random) -> str:
    slots = {key: rng.choice(pool) for key, pool in POOLS.items()}  # one value per slot
    parts = [rng.choice(templates).format(**slots)]
    if rng.random() < 0.3:
        parts.insert(0, rng.choice(OPENERS))
    if rng.random() < 0.3:
        closers = CLOSERS if not parts[-1].endswith("?") else [c for c in CLOSERS if not c.endswith("?")]
        parts.append(rng.choice(closers))
    text = " ".join(parts)
    if rng.random() < 0.1:
        text = text.lower()
    return text


def generate() -> list[str]:
    rng = random.Random(SEED)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    for intent, templates in INTENTS.items():
        assert len(templates) >= 6, intent
        for _ in range(PER_INTENT):
            for _ in range(1000):
                text = make_message(templates, rng)
                if MIN_WORDS <= len(text.split()) <= MAX_WORDS and text.lower() not in seen:
                    break
            else:
                raise RuntimeError(f"could not find a fresh message for {intent}")
            seen.add(text.lower())
            rows.append((intent, text))
    rng.shuffle(rows)

    counts = Counter(intent for intent, _ in rows)
    assert len(INTENTS) == 12 and counts == {name: PER_INTENT for name in INTENTS}, counts
    assert len({text.lower() for _, text in rows}) == len(rows) == 12 * PER_INTENT

    return [
        json.dumps(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": intent},
                ]
            },
            ensure_ascii=False,
        )
        for intent, text in rows
    ]


def main() -> None:
    lines = generate()
    with open(OUT_PATH, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} examples to {OUT_PATH}")


if __name__ == "__main__":
    main()
