"""Invented non-book titles: does the model answer a mug or a software licence with a book blurb?

The shared real records are mostly books, so a model fine-tuned on them may learn "every
product is a book". These titles (invented for this project, no real catalogue text) have no
reference description: they are scored reference-free, on the share of outputs that read like a
book blurb or a review quote. A fine-tuned model must not do worse here than the base model.
"""

from __future__ import annotations

import re

PROBE_TITLES: tuple[str, ...] = (
    "Ceramic Coffee Mug 11 oz, Matte Navy Blue, Dishwasher Safe",
    "Backup Suite 12 Home Edition - 3 PC License, Windows",
    "Stainless Steel Insulated Water Bottle 750ml, Leak-Proof Lid",
    "Wooden Building Blocks Set, 100 Pieces, Ages 3+",
    "Men's Merino Wool Hiking Socks, 3 Pairs, Size L",
    "Non-Stick Frying Pan 28 cm with Glass Lid",
    "USB-C Charging Cable 2 m, Braided, 60W Fast Charge",
    "Women's Waterproof Rain Jacket with Hood, Olive Green, M",
    "Photo Editing Studio 2024 - Download, Mac and Windows",
    "Remote Control Racing Car 1:16, Rechargeable, 2.4 GHz",
    "Bamboo Cutting Board Set of 3 with Juice Groove",
    "Wireless Optical Mouse, Silent Click, 1600 DPI",
    "Kids' Plush Dinosaur Toy, 30 cm, Soft Green",
    "Cast Iron Dutch Oven 5.5 Quart, Enamelled, Red",
    "Antivirus Total Protection 1 Year, 5 Devices",
    "Yoga Mat 6 mm Non-Slip with Carry Strap, Purple",
    "Electric Kettle 1.7 L, Stainless Steel, Auto Shut-Off",
    "Cotton Crew Neck T-Shirt, Pack of 2, Heather Grey, XL",
    "LED Desk Lamp with Wireless Charger, Dimmable",
    "Jigsaw Puzzle 1000 Pieces - Mountain Lake at Dawn",
    "Garden Hose 15 m Expandable with 8-Pattern Spray Nozzle",
    "Language Learning Software - Spanish Levels 1-3, Download",
    "Silicone Baking Mat Set of 2, Half Sheet Size",
    "Bluetooth Over-Ear Headphones, Noise Cancelling, 30 h Battery",
)
"""Invented product titles that are not books (software, kitchenware, toys, clothing, electronics)."""

_BOOK_WORDS = (
    "book", "books", "novel", "novels", "author", "authors", "reader", "readers", "reading", "read",
    "chapter", "chapters", "story", "stories", "storytelling", "fiction", "novelist", "paperback",
    "hardcover", "edition", "published", "publisher", "publishers weekly", "literary", "poems", "poetry",
    "memoir", "bestseller", "bestselling", "page-turner", "plot", "characters", "heroine", "hero",
    "writer", "writing", "written", "prose", "saga", "trilogy", "biography", "kirkus", "booklist",
)
_BOOK = re.compile(r"(?<![\w'-])(?:" + "|".join(re.escape(w) for w in _BOOK_WORDS) + r")(?![\w'-])", re.I)


def is_book_blurb(text: str, title: str = "", min_words: int = 2) -> bool:
    """Whether ``text`` reads like a book blurb: at least ``min_words`` book words that the title
    itself does not use (a jigsaw titled "... Story" may say "story")."""
    title_hits = {w.lower() for w in _BOOK.findall(title or "")}
    hits = [w for w in _BOOK.findall(text or "") if w.lower() not in title_hits]
    return len(hits) >= min_words
