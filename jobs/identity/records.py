"""Identity records: every customer-bearing source record in one shape, then normalized for matching.

`identity_records` takes each identity source's restricted rows (raw PII) and silver rows (the rest)
and returns one row per record: `record_key` (`<source>:<record id>`), `source`, `record_id`,
`updated_at`, the person attributes the source has (others null) and its strong identifiers.
`normalize` adds the matching forms of the attributes: `email_n`, `phone_n`, `first_n`, `first_c`
(nicknames folded: Bob → robert), `last_n`, `street_n`, `postal_n`, `city_n`, `state_n`, `dob`.
`identity_records` is a Spark transform (it reads the lake); `normalize` is DuckDB SQL, run in the
matcher's process on the lake's records and a user's CSV alike (`p13n identity resolve` starts no
Spark). `normalize_street` and `normalize_postal` are also Spark columns, for the golden record's
household id; a test holds them equal to the SQL forms.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from p13n.config import IdentitySource
from p13n.lake.duck import literal

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


def _sql_letters(col: str) -> str:
    """Lower-case letters only: "O'Brien" and "OBRIEN" compare equal, "Van der Berg" → "vanderberg"."""
    return f"nullif(regexp_replace(lower(trim({col})), '[^a-zà-ÿ]', '', 'g'), '')"


def _sql_email(col: str) -> str:
    """Lower-case, trimmed; the local part without a +tag, and without dots at Gmail (one mailbox)."""
    email = f"lower(trim({col}))"
    local = f"regexp_replace(split_part({email}, '@', 1), '[+].*$', '')"
    domain = f"split_part({email}, '@', 2)"
    gmail = f"{domain} IN ('gmail.com', 'googlemail.com')"
    return (
        f"CASE WHEN regexp_full_match({email}, '[^@\\s]+@[^@\\s]+[.][a-z]{{2,}}') THEN "
        f"(CASE WHEN {gmail} THEN replace({local}, '.', '') ELSE {local} END) || '@' || "
        f"(CASE WHEN {gmail} THEN 'gmail.com' ELSE {domain} END) END"
    )


def _sql_phone(col: str) -> str:
    """Digits only; a North American number as its 10 digits (+1 and a leading 1 dropped)."""
    digits = f"regexp_replace({col}, '[^0-9]', '', 'g')"
    return (
        f"CASE WHEN length({digits}) = 11 AND starts_with({digits}, '1') THEN substring({digits}, 2, 10) "
        f"WHEN length({digits}) >= 7 THEN {digits} END"
    )


def _sql_street(col: str) -> str:
    """`normalize_street` in DuckDB: words lower-cased, punctuation dropped, street words shortened."""
    words = f"regexp_split_to_array(trim(regexp_replace(lower({col}), '[^a-z0-9 ]', ' ', 'g')), '\\s+')"
    cases = " ".join(f"WHEN {literal(k)} THEN {literal(v)}" for k, v in _STREET_WORDS.items())
    short = f"list_transform({words}, w -> CASE w {cases} ELSE w END)"
    return f"nullif(array_to_string(list_filter({short}, w -> w <> ''), ' '), '')"


def _sql_postal(col: str) -> str:
    """`normalize_postal` in DuckDB."""
    up = f"upper(regexp_replace(CAST({col} AS VARCHAR), '[\\s-]', '', 'g'))"
    return (
        f"CASE WHEN regexp_full_match({up}, '[0-9]{{9}}') THEN substring({up}, 1, 5) "
        f"WHEN regexp_full_match({up}, '[A-Z0-9]{{3,10}}') AND regexp_matches({up}, '[0-9]') THEN {up} END"
    )


def _sql_date(col: str) -> str:
    """A birth date as yyyy-MM-dd, read as 1956-09-09, 09/09/1956, 1956/09/09 or 19560909."""
    text = f"trim(CAST({col} AS VARCHAR))"
    return (
        "strftime(coalesce("
        f"try_strptime({text}, '%Y-%m-%d'), try_strptime({text}, '%m/%d/%Y'), "
        f"try_strptime({text}, '%Y/%m/%d'), "
        f"CASE WHEN regexp_full_match({text}, '(19|20)[0-9]{{6}}') THEN try_strptime({text}, '%Y%m%d') END"
        "), '%Y-%m-%d')"
    )


def normalize(con, table: str) -> str:
    """The SQL (DuckDB) selecting `table` with the matching forms of whichever person attributes it
    has added (absent ones are null): email_n, phone_n, first_n, first_c, last_n, street_n, postal_n,
    city_n, state_n, dob. A file's records and the lake's records go through this one normalization."""
    columns = {c for c, *_ in con.sql(f"DESCRIBE {table}").fetchall()}

    def attr(name: str) -> str:
        return f'CAST("{name}" AS VARCHAR)' if name in columns else "CAST(NULL AS VARCHAR)"

    first = _sql_letters(attr("first_name"))
    nick = "MAP {" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in NICKNAMES.items()) + "}"
    return f"""
        SELECT *,
            {_sql_email(attr("email"))} AS email_n,
            {_sql_phone(attr("phone"))} AS phone_n,
            {first} AS first_n,
            coalesce(map_extract_value({nick}, {first}), {first}) AS first_c,
            {_sql_letters(attr("last_name"))} AS last_n,
            {_sql_street(attr("street"))} AS street_n,
            {_sql_postal(attr("postal_code"))} AS postal_n,
            {_sql_letters(attr("city"))} AS city_n,
            nullif(upper(trim({attr("state")})), '') AS state_n,
            {_sql_date(attr("birth_date"))} AS dob
        FROM {table}
    """
