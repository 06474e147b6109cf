"""Identity records: every customer-bearing source record in one shape, then normalized for matching.

`identity_records` takes each identity source's restricted rows (raw PII) and silver rows (the rest)
and returns one row per record: `record_key` (`<source>:<record id>`), `source`, `record_id`,
`updated_at`, the person attributes the source has (others null) and its strong identifiers.
`normalize` adds the matching forms of the attributes: `email_n`, `phone_n`, `first_n`, `first_c`
(nicknames folded: Bob → robert), `last_n`, `street_n`, `postal_n`, `city_n`, `state_n`, `dob`.
Both are pure Spark transforms; the same `normalize` runs on raw CSV input (`p13n identity resolve`).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from p13n.config import IdentitySource

ATTRIBUTES = (
    "first_name",
    "last_name",
    "email",
    "phone",
    "street",
    "city",
    "state",
    "postal_code",
    "birth_date",
)
KEY_TYPES = ("shopify_customer_id", "crm_contact_id", "loyalty_id")
NORMALIZED = (
    "email_n",
    "phone_n",
    "first_n",
    "first_c",
    "last_n",
    "street_n",
    "postal_n",
    "city_n",
    "state_n",
    "dob",
)

# Common English nicknames folded to the formal name (Bob → robert). A nickname that is also a common
# name in its own right (Lisa, Jack, Betty, Nancy…) is left out: folding it would equate two people.
NICKNAMES = {
    "bob": "robert",
    "rob": "robert",
    "bobby": "robert",
    "bill": "william",
    "will": "william",
    "billy": "william",
    "liam": "william",
    "rick": "richard",
    "rich": "richard",
    "dick": "richard",
    "liz": "elizabeth",
    "beth": "elizabeth",
    "mike": "michael",
    "mick": "michael",
    "jen": "jennifer",
    "jenny": "jennifer",
    "joe": "joseph",
    "joey": "joseph",
    "tom": "thomas",
    "tommy": "thomas",
    "chris": "christopher",
    "dan": "daniel",
    "danny": "daniel",
    "matt": "matthew",
    "tony": "anthony",
    "steve": "steven",
    "andy": "andrew",
    "drew": "andrew",
    "josh": "joshua",
    "ken": "kenneth",
    "kenny": "kenneth",
    "peggy": "margaret",
    "maggie": "margaret",
    "meg": "margaret",
    "pat": "patricia",
    "patty": "patricia",
    "kate": "katherine",
    "katie": "katherine",
    "kathy": "katherine",
    "cathy": "catherine",
    "sam": "samantha",
    "ben": "benjamin",
    "nick": "nicholas",
    "alex": "alexander",
    "jon": "jonathan",
    "tim": "timothy",
    "greg": "gregory",
    "jeff": "jeffrey",
    "steph": "stephanie",
    "becky": "rebecca",
    "vicky": "victoria",
    "tina": "christina",
    "deb": "deborah",
    "debbie": "deborah",
    "kim": "kimberly",
    "zach": "zachary",
    "ed": "edward",
    "eddie": "edward",
    "ted": "edward",
    "jim": "james",
    "jimmy": "james",
    "johnny": "john",
    "dave": "david",
    "sue": "susan",
    "susie": "susan",
    "cindy": "cynthia",
    "ron": "ronald",
    "don": "donald",
    "doug": "douglas",
    "ray": "raymond",
    "sandy": "sandra",
    "pam": "pamela",
    "abby": "abigail",
    "mandy": "amanda",
}
_STREET_WORDS = {
    "street": "st",
    "avenue": "ave",
    "road": "rd",
    "boulevard": "blvd",
    "drive": "dr",
    "lane": "ln",
    "court": "ct",
    "apartment": "apt",
    "suite": "ste",
    "north": "n",
    "south": "s",
    "east": "e",
    "west": "w",
    "place": "pl",
    "terrace": "ter",
    "highway": "hwy",
    "parkway": "pkwy",
    "circle": "cir",
}


def identity_records(
    restricted: dict[str, DataFrame], silver: dict[str, DataFrame], sources: dict[str, IdentitySource]
) -> DataFrame:
    """One row per identity-source record: key, source, dates, person attributes and strong identifiers.

    `restricted[s]` holds source `s`'s raw PII by primary key, `silver[s]` its other columns; a record
    is in silver and restricted alike (erasure removes both), so they join one-to-one on the key.
    """
    parts = []
    for name, spec in sources.items():
        if name not in silver:
            continue
        rows = silver[name]
        if name in restricted:
            pii = restricted[name]
            keys = [c for c in pii.columns if c in rows.columns and not c.startswith("_")]
            rows = rows.select(*[c for c in rows.columns if c not in pii.columns or c in keys]).join(
                pii.drop("_batch_id"), on=keys, how="inner"
            )
        parts.append(
            rows.select(
                F.concat(F.lit(f"{name}:"), F.col(spec.record_id).cast("string")).alias("record_key"),
                F.lit(name).alias("source"),
                F.col(spec.record_id).cast("string").alias("record_id"),
                F.col(spec.updated).cast("timestamp").alias("updated_at"),
                *[
                    (F.col(a).cast("string") if a in rows.columns else F.lit(None).cast("string")).alias(a)
                    for a in ATTRIBUTES
                ],
                *[
                    (
                        F.col(spec.keys[k]).cast("string") if k in spec.keys else F.lit(None).cast("string")
                    ).alias(k)
                    for k in KEY_TYPES
                ],
            )
        )
    if not parts:
        raise ValueError("no identity source has a silver table yet: ingest sources first")
    out = parts[0]
    for part in parts[1:]:
        out = out.unionByName(part)
    return out


def _letters(col: Column) -> Column:
    """Lower-case letters only: "O'Brien" and "OBRIEN" compare equal, "Van der Berg" → "vanderberg"."""
    value = F.regexp_replace(F.lower(F.trim(col)), r"[^a-zà-ÿ]", "")
    return F.when(value != "", value)


def normalize_email(col: Column) -> Column:
    """Lower-case, trimmed; the local part without a +tag, and without dots at Gmail (one mailbox)."""
    email = F.lower(F.trim(col))
    local = F.regexp_replace(F.substring_index(email, "@", 1), r"\+.*$", "")
    domain = F.substring_index(email, "@", -1)
    local = F.when(domain.isin("gmail.com", "googlemail.com"), F.regexp_replace(local, r"\.", "")).otherwise(
        local
    )
    valid = email.rlike(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
    return F.when(
        valid, F.concat(local, F.lit("@"), F.regexp_replace(domain, "^googlemail.com$", "gmail.com"))
    )


def normalize_phone(col: Column) -> Column:
    """Digits only; a North American number as its 10 digits (+1 and a leading 1 dropped)."""
    digits = F.regexp_replace(col, r"[^0-9]", "")
    n = F.length(digits)
    return F.when((n == 11) & digits.startswith("1"), F.substring(digits, 2, 10)).when(n >= 7, digits)


def normalize_street(col: Column) -> Column:
    words = F.split(F.trim(F.regexp_replace(F.lower(col), r"[^a-z0-9 ]", " ")), r"\s+")
    mapping = F.create_map(*[F.lit(x) for kv in _STREET_WORDS.items() for x in kv])
    short = F.transform(words, lambda w: F.coalesce(F.element_at(mapping, w), w))
    value = F.array_join(F.filter(short, lambda w: w != ""), " ")
    return F.when(value != "", value)


def normalize_postal(col: Column) -> Column:
    """US ZIP (ZIP+4 cut to 5), and any other country's code as its letters and digits (Canada A1A1A1,
    Australia 4011, UK SW1A1AA, Germany 10115): 3 to 10 of them, at least one digit."""
    up = F.upper(F.regexp_replace(col.cast("string"), r"[\s-]", ""))
    return F.when(up.rlike(r"^[0-9]{9}$"), F.substring(up, 1, 5)).when(
        up.rlike(r"^[A-Z0-9]{3,10}$") & up.rlike(r"[0-9]"), up
    )


def normalize_date(col: Column) -> Column:
    text = F.trim(col.cast("string"))
    value = F.coalesce(
        F.try_to_date(text, "yyyy-MM-dd"),
        F.try_to_date(text, "MM/dd/yyyy"),
        F.try_to_date(text, "yyyy/MM/dd"),
        F.when(
            text.rlike(r"^(19|20)\d{6}$"), F.try_to_date(text, "yyyyMMdd")
        ),  # 19560909 (FEBRL, many exports)
    )
    return F.date_format(value, "yyyy-MM-dd")


def normalize(records: DataFrame) -> DataFrame:
    """Add the matching forms of whichever person attributes `records` has (absent ones are null)."""

    def attr(name: str) -> Column:
        return F.col(name).cast("string") if name in records.columns else F.lit(None).cast("string")

    nick = F.create_map(*[F.lit(x) for kv in NICKNAMES.items() for x in kv])
    first = _letters(attr("first_name"))
    return records.select(
        "*",
        normalize_email(attr("email")).alias("email_n"),
        normalize_phone(attr("phone")).alias("phone_n"),
        first.alias("first_n"),
        F.coalesce(F.element_at(nick, first), first).alias("first_c"),
        _letters(attr("last_name")).alias("last_n"),
        normalize_street(attr("street")).alias("street_n"),
        normalize_postal(attr("postal_code")).alias("postal_n"),
        _letters(attr("city")).alias("city_n"),
        F.upper(F.trim(attr("state"))).alias("state_n"),
        normalize_date(attr("birth_date")).alias("dob"),
    )
