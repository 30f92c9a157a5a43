"""Varied, realistic-looking texts for the pipelines bench: support tickets, product notes,
reviews and changelog lines of 5 to 60 words (uniform), all distinct, seeded."""

from __future__ import annotations

import random

SUBJECTS = ("The customer", "Our nightly export", "The billing page", "A new employee", "The warehouse team",
            "This laptop", "The mobile app", "Support", "The release", "The payment provider", "My order",
            "The search box", "The onboarding email", "Version 4.2", "The API gateway", "The dashboard",
            "The delivery driver", "Our database", "The kitchen blender", "The hotel room")
VERBS = ("reported", "stopped", "needs", "improved", "broke", "delayed", "shows", "keeps", "asked for",
         "fixed", "arrived with", "rejected", "slowed down", "returned", "described", "requires", "lost",
         "updated", "ignored", "confirmed")
OBJECTS = ("an invoice", "the refund", "two missing items", "a timeout", "the password reset", "a broken hinge",
           "the shipping label", "a duplicate charge", "the weekly report", "a login loop", "the battery",
           "a warranty claim", "the export file", "an empty cart", "the tracking number", "a crash on start",
           "a discount code", "the firmware update", "a slow query", "the cancellation")
TAILS = ("after the last update", "since Monday", "for the third time", "without any warning", "on every device",
         "during checkout", "in the evening", "at the Berlin office", "before the deadline", "when the queue was full",
         "despite the retry", "on the old browser", "with a clear error message", "for premium accounts",
         "while travelling", "in both languages", "at peak hours", "under heavy load", "in the test environment",
         "right after installation")
FILLER = ("please", "also", "really", "again", "quickly", "honestly", "still", "maybe", "very", "finally",
          "overall", "however", "otherwise", "today", "tomorrow", "yesterday", "usually", "rarely", "clearly",
          "apparently", "colour", "screen", "cable", "order", "account", "team", "manager", "feedback", "price",
          "quality", "friendly", "noisy", "fast", "reliable", "expensive", "cheap", "warm", "cold", "helpful")


def sentence(rng: random.Random) -> list[str]:
    words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}".split()
    words[-1] += rng.choice((".", ".", ".", "!", "?"))
    return words


def text(rng: random.Random, ref: int, n_words: int) -> str:
    """About `n_words` words: sentences, a few filler words, a reference number (keeps texts distinct)."""
    words: list[str] = [f"Ticket {ref}:"]
    while len(words) < n_words:
        if rng.random() < 0.3:
            words.append(rng.choice(FILLER))
        else:
            words.extend(sentence(rng))
    return " ".join(words[:max(n_words, 5)])


def texts(n: int, seed: int, start: int = 0, min_words: int = 5, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [text(rng, start + i, rng.randint(min_words, max_words)) for i in range(n)]
