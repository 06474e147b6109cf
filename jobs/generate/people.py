"""The synthetic retailer's customers: who they are, how each system spells them, what they like.

People are drawn column-wise with numpy (a million fit in a few hundred MB); each person's text
fields come from a private RNG seeded by (seed, person index), so any record can be regenerated
without holding the population in memory and the same seed always gives the same people.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np

FIRST_NAMES = [
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "William",
    "Elizabeth",
    "David",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Christopher",
    "Nancy",
    "Daniel",
    "Lisa",
    "Matthew",
    "Margaret",
    "Anthony",
    "Betty",
    "Mark",
    "Sandra",
    "Donald",
    "Ashley",
    "Steven",
    "Kimberly",
    "Paul",
    "Emily",
    "Andrew",
    "Donna",
    "Joshua",
    "Michelle",
    "Kenneth",
    "Dorothy",
    "Kevin",
    "Carol",
    "Brian",
    "Amanda",
    "George",
    "Melissa",
    "Edward",
    "Deborah",
    "Ronald",
    "Stephanie",
    "Timothy",
    "Rebecca",
    "Jason",
    "Laura",
    "Jeffrey",
    "Sharon",
    "Ryan",
    "Cynthia",
    "Jacob",
    "Kathleen",
    "Gary",
    "Amy",
    "Nicholas",
    "Shirley",
    "Eric",
    "Angela",
    "Jonathan",
    "Helen",
    "Stephen",
    "Anna",
    "Larry",
    "Brenda",
    "Justin",
    "Pamela",
    "Scott",
    "Nicole",
    "Brandon",
    "Emma",
    "Benjamin",
    "Samantha",
    "Samuel",
    "Katherine",
    "Gregory",
    "Christine",
    "Frank",
    "Debra",
    "Alexander",
    "Rachel",
    "Raymond",
    "Catherine",
    "Patrick",
    "Carolyn",
    "Jack",
    "Janet",
    "Dennis",
    "Ruth",
    "Jerry",
    "Maria",
    "Tyler",
    "Heather",
    "Aaron",
    "Diane",
    "Jose",
    "Virginia",
    "Adam",
    "Julie",
    "Henry",
    "Joyce",
    "Nathan",
    "Victoria",
    "Douglas",
    "Olivia",
    "Zachary",
    "Kelly",
    "Peter",
    "Christina",
    "Kyle",
    "Lauren",
    "Wei",
    "Priya",
    "Mohammed",
    "Fatima",
    "Hiroshi",
    "Yuki",
    "Carlos",
    "Lucia",
    "Olga",
    "Dmitri",
]
NICKNAMES = {
    "Robert": "Bob",
    "William": "Bill",
    "Richard": "Rick",
    "Elizabeth": "Liz",
    "Michael": "Mike",
    "Jennifer": "Jen",
    "Joseph": "Joe",
    "Thomas": "Tom",
    "Christopher": "Chris",
    "Daniel": "Dan",
    "Matthew": "Matt",
    "Anthony": "Tony",
    "Steven": "Steve",
    "Andrew": "Andy",
    "Joshua": "Josh",
    "Kenneth": "Ken",
    "Margaret": "Peggy",
    "Patricia": "Pat",
    "Katherine": "Kate",
    "Samantha": "Sam",
    "Benjamin": "Ben",
    "Nicholas": "Nick",
    "Alexander": "Alex",
    "Jonathan": "Jon",
    "Timothy": "Tim",
    "Gregory": "Greg",
    "Jeffrey": "Jeff",
    "Stephanie": "Steph",
    "Rebecca": "Becky",
    "Victoria": "Vicky",
    "Christina": "Tina",
    "Deborah": "Deb",
    "Kimberly": "Kim",
    "Zachary": "Zach",
    "Edward": "Ed",
}
LAST_NAMES = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Gomez",
    "Phillips",
    "Evans",
    "Turner",
    "Diaz",
    "Parker",
    "Cruz",
    "Edwards",
    "Collins",
    "Reyes",
    "Stewart",
    "Morris",
    "Morales",
    "Murphy",
    "Cook",
    "Rogers",
    "Gutierrez",
    "Ortiz",
    "Morgan",
    "Cooper",
    "Peterson",
    "Bailey",
    "Reed",
    "Kelly",
    "Howard",
    "Ramos",
    "Kim",
    "Cox",
    "Ward",
    "Richardson",
    "Watson",
    "Brooks",
    "Chavez",
    "Wood",
    "James",
    "Bennett",
    "Gray",
    "Mendoza",
    "Ruiz",
    "Hughes",
    "Price",
    "Alvarez",
    "Castillo",
    "Sanders",
    "Patel",
    "Myers",
    "Long",
    "Ross",
    "Foster",
    "Jimenez",
    "Okafor",
    "Kowalski",
    "Nakamura",
    "Schmidt",
    "O'Brien",
    "Van der Berg",
    "Dubois",
    "Rossi",
    "Ivanova",
    "Chen",
    "Singh",
]
STREETS = [
    "Main",
    "Oak",
    "Pine",
    "Maple",
    "Cedar",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Park",
    "Walnut",
    "Sunset",
    "Lincoln",
    "Jackson",
    "Church",
    "Highland",
    "Forest",
    "River",
    "Spring",
    "Ridge",
    "Meadow",
    "Willow",
    "Chestnut",
    "Franklin",
    "Adams",
    "Jefferson",
    "Madison",
    "Mill",
    "Center",
    "Union",
]
SUFFIXES = [
    ("Street", "St"),
    ("Avenue", "Ave"),
    ("Road", "Rd"),
    ("Drive", "Dr"),
    ("Lane", "Ln"),
    ("Boulevard", "Blvd"),
    ("Court", "Ct"),
]
CITIES = [
    ("New York", "NY", "100"),
    ("Brooklyn", "NY", "112"),
    ("Boston", "MA", "021"),
    ("Philadelphia", "PA", "191"),
    ("Chicago", "IL", "606"),
    ("Evanston", "IL", "602"),
    ("Columbus", "OH", "432"),
    ("Detroit", "MI", "482"),
    ("Minneapolis", "MN", "554"),
    ("Milwaukee", "WI", "532"),
    ("Atlanta", "GA", "303"),
    ("Miami", "FL", "331"),
    ("Orlando", "FL", "328"),
    ("Charlotte", "NC", "282"),
    ("Nashville", "TN", "372"),
    ("Dallas", "TX", "752"),
    ("Austin", "TX", "787"),
    ("Houston", "TX", "770"),
    ("Denver", "CO", "802"),
    ("Phoenix", "AZ", "850"),
    ("Seattle", "WA", "981"),
    ("Portland", "OR", "972"),
    ("San Diego", "CA", "921"),
    ("Los Angeles", "CA", "900"),
    ("San Jose", "CA", "951"),
    ("Sacramento", "CA", "958"),
    ("Baltimore", "MD", "212"),
    ("Pittsburgh", "PA", "152"),
    ("St. Louis", "MO", "631"),
    ("Kansas City", "MO", "641"),
]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "hotmail.com", "aol.com", "proton.me"]
CATEGORIES = [
    ("grocery", True),
    ("beauty", True),
    ("baby", True),
    ("pet", True),
    ("household", True),
    ("health", True),
    ("apparel", False),
    ("footwear", False),
    ("electronics", False),
    ("home", False),
    ("toys", False),
    ("sports", False),
]


@dataclass(frozen=True, slots=True)
class Identity:
    """A person's true identity, from which every system's (noisy) record is derived."""

    person_id: str
    household_id: str
    first_name: str
    last_name: str
    email: str
    phone: str  # 10 digits
    street: str  # "123 Oak Street"
    city: str
    state: str
    postal_code: str
    old_street: str | None  # a previous address, still held by older systems
    birth_date: str


class Population:
    """N people: latent behaviour as numpy arrays, identities regenerated on demand."""

    def __init__(self, n: int, days: int, seed: int):
        self.n, self.days, self.seed = n, days, seed
        rng = np.random.default_rng(seed)
        # Households: about a third of people share an address with the person before them.
        shares = rng.random(n) < 0.3
        shares[0] = False
        head = np.arange(n)
        for i in np.nonzero(shares)[0]:
            head[i] = head[i - 1]
        self.household = head
        self.category_pref = rng.dirichlet(np.full(len(CATEGORIES), 0.35), size=n).astype(np.float32)
        self.price_band = rng.choice(3, size=n, p=[0.45, 0.4, 0.15]).astype(np.int8)
        # Scaled to the seed retailer's rate: 15M transactions a year for 2.8M customers (~0.45 a month).
        self.monthly_orders = (0.33 * np.clip(rng.lognormal(mean=0.0, sigma=0.8, size=n), 0.05, 12)).astype(
            np.float32
        )
        # New customers join during the period; churners stop buying at some point in it.
        self.signup_day = np.where(
            rng.random(n) < 0.15, rng.integers(0, max(days, 1), size=n), -rng.integers(30, 1500, size=n)
        )
        churns = rng.random(n) < 0.25
        self.churn_day = np.where(churns, rng.integers(0, max(days, 1) + 60, size=n), 10**9)
        self.reactivate_day = np.where(
            churns & (rng.random(n) < 0.15), self.churn_day + rng.integers(20, 90, size=n), 10**9
        )
        self.channel_pref = rng.dirichlet([3.0, 2.0, 2.5], size=n).astype(np.float32)  # web, app, store
        self.home_store = rng.integers(0, 68, size=n)
        self.email_engagement = rng.beta(2, 5, size=n).astype(np.float32)
        self.has_app = rng.random(n) < 0.45
        self.loyalty = rng.random(n) < 0.55
        self.in_crm = rng.random(n) < 0.6
        self.consent_email = rng.random(n) < 0.7
        self.consent_sms = rng.random(n) < 0.35
        self.consent_push = self.has_app & (rng.random(n) < 0.6)
        self.email_platform = rng.random(n) < 0.5  # True: Klaviyo, False: Mailchimp (split usage)
        # The past, from a second stream so that everything drawn above stays as it was: a third of
        # the customers who joined before day 0 lapsed at some point before it (some came back), and
        # each person reads email at a favourite hour and is likelier to open on a favourite weekday.
        h = np.random.default_rng(seed + 7)
        lapsed = (h.random(n) < 0.3) & (self.signup_day < -60) & (self.churn_day == 10**9)
        lapse_day = h.integers(np.minimum(self.signup_day + 30, -2), -1)
        self.churn_day = np.where(lapsed, lapse_day, self.churn_day)
        back = lapsed & (h.random(n) < 0.2)
        self.reactivate_day = np.where(back, lapse_day + h.integers(30, 240, size=n), self.reactivate_day)
        hours = np.array([1, 1, 1, 1, 1, 2, 4, 7, 9, 8, 6, 5, 6, 5, 4, 4, 5, 6, 8, 9, 9, 7, 4, 2], float)
        self.open_hour = h.choice(24, size=n, p=hours / hours.sum()).astype(np.int8)
        self.open_weekday = h.integers(0, 7, size=n).astype(np.int8)
        self._drawn: list[Identity] | None = None

    def active(self, day: int) -> np.ndarray:
        return (self.signup_day <= day) & ((day < self.churn_day) | (day >= self.reactivate_day))

    def identity(self, i: int) -> Identity:
        """Person `i`'s identity: drawn once (a day's records ask for it about 13 times a person)."""
        return self._identities()[i]

    def _identities(self) -> list[Identity]:
        """Everyone's identity, drawn on first use; mailboxes are unique: the second James Smith at
        gmail gets a different address."""
        if self._drawn is None:
            drawn = [self._draw(i) for i in range(self.n)]
            digests = np.array([hash(d.email) for d in drawn], dtype=np.int64)
            _, first = np.unique(digests, return_index=True)
            taken = np.ones(self.n, dtype=bool)
            taken[first] = False
            for i in np.flatnonzero(taken):
                local, _, domain = drawn[i].email.partition("@")
                drawn[i] = replace(drawn[i], email=f"{local}_{i + 1}@{domain}")
            self._drawn = drawn
        return self._drawn

    def _draw(self, i: int) -> Identity:
        r = random.Random(self.seed * 1_000_003 + int(self.household[i]))  # the household's address
        number = r.randint(1, 9999)
        street_name, (suffix, _) = r.choice(STREETS), r.choice(SUFFIXES)
        city, state, zip3 = r.choice(CITIES)
        postal = f"{zip3}{r.randint(0, 99):02d}"
        family = r.choice(LAST_NAMES)
        p = random.Random(self.seed * 7_919 + i * 104_729 + 17)  # the person
        first = p.choice(FIRST_NAMES)
        last = family if (self.household[i] != i and p.random() < 0.8) else p.choice(LAST_NAMES)
        moved = p.random() < 0.12
        old = f"{p.randint(1, 9999)} {p.choice(STREETS)} {p.choice(SUFFIXES)[0]}" if moved else None
        handle = (
            p.choice(
                [
                    f"{first}.{last}",
                    f"{first}{last}",
                    f"{first[0]}{last}",
                    f"{first}_{last}{p.randint(1, 99)}",
                    f"{last}.{first}",
                ]
            )
            .lower()
            .replace(" ", "")
            .replace("'", "")
        )
        email = f"{handle}{p.randint(1, 999) if p.random() < 0.3 else ''}@{p.choice(DOMAINS)}"
        phone = f"{p.randint(201, 989)}{p.randint(200, 999)}{p.randint(0, 9999):04d}"
        birth = f"{p.randint(1945, 2005)}-{p.randint(1, 12):02d}-{p.randint(1, 28):02d}"
        return Identity(
            f"P{i + 1:07d}",
            f"H{int(self.household[i]) + 1:07d}",
            first,
            last,
            email,
            phone,
            f"{number} {street_name} {suffix}",
            city,
            state,
            postal,
            old,
            birth,
        )


# ---------------------------------------------------------------------- how systems spell a person
def vary_email(email: str, r: random.Random, typo_rate: float = 0.02) -> str:
    local, _, domain = email.partition("@")
    roll = r.random()
    if roll < 0.15:
        local = local.capitalize()
    elif roll < 0.2:
        local, domain = local.upper(), domain.upper()
    elif roll < 0.25 and domain == "gmail.com" and "." not in local and len(local) > 3:
        cut = r.randint(1, len(local) - 1)
        local = f"{local[:cut]}.{local[cut:]}"  # gmail ignores dots: same mailbox, different string
    if r.random() < typo_rate and len(local) > 3:
        k = r.randint(0, len(local) - 2)
        local = local[:k] + local[k + 1] + local[k] + local[k + 2 :]
    text = f"{local}@{domain}"
    return f" {text} " if r.random() < 0.03 else text


def vary_phone(phone: str, r: random.Random) -> str:
    a, b, c = phone[:3], phone[3:6], phone[6:]
    return r.choice(
        [f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"{a}{b}{c}", f"1{a}{b}{c}"]
    )


def vary_first(first: str, r: random.Random, nickname_rate: float = 0.25) -> str:
    if first in NICKNAMES and r.random() < nickname_rate:
        first = NICKNAMES[first]
    roll = r.random()
    return first.upper() if roll < 0.1 else first.lower() if roll < 0.15 else first


def vary_last(last: str, r: random.Random) -> str:
    roll = r.random()
    return last.upper() if roll < 0.1 else last.lower() if roll < 0.15 else last


def vary_street(street: str, r: random.Random) -> str:
    for long, short in SUFFIXES:
        if street.endswith(long) and r.random() < 0.5:
            street = street[: -len(long)] + (short + ("." if r.random() < 0.3 else ""))
    return street.upper() if r.random() < 0.1 else street


def maybe(value, r: random.Random, missing_rate: float):
    return None if r.random() < missing_rate else value
