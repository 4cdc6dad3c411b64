"""Write experiments/data/contacts.jsonl: the task of experiments/smollm2-contacts.yaml.

Each row asks for one person's name, age and city, mentioned in a sentence, as one line of
JSON with fixed keys in a fixed order. An instruction model answers it in its own style (prose,
code fences, other keys, other orders), so exact match against the one accepted form measures
consistent output formatting, the classic thing fine-tuning teaches; the facts are all in the
sentence, so no world knowledge is needed. Written by this project (names, cities and sentence
patterns below), released with it under its licence. Deterministic:

    python experiments/data/make_contacts.py   # rewrites the file; tests check it is current
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).with_name("contacts.jsonl")
ROWS = 700
SEED = 0

FIRST = (
    "Maria", "Ken", "Aisha", "Tom", "Lena", "Omar", "Sofia", "Ivan", "Mei", "Lucas", "Amara",
    "Jonas", "Priya", "Diego", "Hana", "Felix", "Nadia", "Kofi", "Elena", "Ravi", "Yuki",
    "Marco", "Zara", "Pavel", "Ines", "Tariq", "Chloe", "Emeka", "Sara", "Hugo", "Leila",
    "Mateo", "Anya", "Samuel", "Fatima", "Oscar", "Nora", "Kenji", "Alma", "Viktor"
)  # fmt: skip
LAST = (
    "Lopez", "Sato", "Khan", "Becker", "Novak", "Haddad", "Rossi", "Petrov", "Chen", "Silva",
    "Okafor", "Berg", "Patel", "Ramirez", "Kim", "Wagner", "Ali", "Mensah", "Popescu", "Iyer",
    "Tanaka", "Conti", "Malik", "Horvat", "Costa", "Aziz", "Martin", "Eze", "Lind", "Moreau",
    "Farah", "Torres", "Ivanova", "Levi", "Said", "Nilsen", "Dahl", "Mori", "Vega", "Kovacs"
)  # fmt: skip
CITIES = (
    "Lima", "Osaka", "Lagos", "Berlin", "Prague", "Beirut", "Milan", "Kazan", "Taipei", "Recife",
    "Accra", "Bergen", "Pune", "Quito", "Busan", "Graz", "Tunis", "Kumasi", "Cluj", "Chennai",
    "Sapporo", "Turin", "Lahore", "Split", "Porto", "Muscat", "Lyon", "Enugu", "Malmo", "Nantes",
    "Dakar", "Cusco", "Minsk", "Haifa", "Izmir", "Oslo", "Aarhus", "Kyoto", "Bogota", "Szeged",
)  # fmt: skip
# Where the facts sit in the sentence varies, so the answer cannot be copied in order.
SENTENCES = (
    "{name}, {age}, lives in {city}.",
    "Our new colleague is {name} from {city}; {pronoun} turned {age} last month.",
    "{city} resident {name} (age {age}) signed up yesterday.",
    "At {age}, {name} moved to {city} for work.",
    "Meet {name}: {age} years old, based in {city}.",
    "The parcel is for {name} in {city}, who is {age}.",
    "{name} has lived in {city} since childhood and is now {age}.",
    "Age {age}, city {city}, name {name}.",
    "Registration: {name}, aged {age}, from {city}.",
    "I spoke with {name} ({age}) on the phone; {pronoun} is in {city} this week.",
)
INSTRUCTION = "Extract the person as JSON with the keys name, age and city.\n\n{sentence}"


def rows(n: int = ROWS, seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        age = rng.randint(18, 89)
        city = rng.choice(CITIES)
        sentence = rng.choice(SENTENCES).format(
            name=name, age=age, city=city, pronoun=rng.choice(("she", "he"))
        )
        answer = json.dumps({"name": name, "age": age, "city": city})
        out.append(
            {
                "messages": [
                    {"role": "user", "content": INSTRUCTION.format(sentence=sentence)},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return out


def render(data: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in data)


if __name__ == "__main__":
    OUT.write_text(render(rows()))
    print(f"wrote {ROWS} rows to {OUT}")
