"""Klaviyo through its official SDK (`klaviyo-api`).

* Upserts: bulk profile import jobs, at most 10,000 profiles and 5 MB a job, each adding its profiles
  to the audience's list; the job is polled until it finishes and its import errors are read back
  per profile (a rejected profile is recorded with Klaviyo's reason, the others go through).
* Consent: list membership is not consent. New members are subscribed to the audience's channel's
  marketing (email, or SMS for `channel: sms`) through a subscription job (at most 1,000 a job), and
  only customers whose consent for that channel is on record are exported at all. A profile carries
  that channel's address only: the email, or the number in E.164. A member who revoked consent (or
  was erased) is removed from the list and unsubscribed (at most 100 a job); one who merely left the
  audience is only removed from the list.
* Removal needs Klaviyo's profile ids: looked up by email (or number), 100 at a time.
* 429 and 5xx are retried by the SDK with exponential backoff that waits out Retry-After
  (`activation.klaviyo.max_retries`, `max_backoff_seconds`); every call has a timeout.
"""

from __future__ import annotations

import json
import time

from p13n.activation.sync import Outcome, SyncError, chunks, required

EVENTS_MAX = 1000  # profiles a bulk event job takes
IMPORT_MAX, IMPORT_BYTES, LIST_MAX, SUBSCRIBE_MAX, UNSUBSCRIBE_MAX, LOOKUP_MAX = (
    10_000,
    5 * 1024 * 1024 - 64 * 1024,
    1000,
    1000,
    100,
    100,
)


class Klaviyo:
    name = "klaviyo"

    def __init__(self, settings, api_key: str):
        from klaviyo_api import KlaviyoAPI

        cfg = settings.activation.klaviyo
        self.cfg = cfg
        self.api = KlaviyoAPI(
            api_key,
            max_delay=cfg.max_backoff_seconds,
            max_retries=cfg.max_retries,
            test_host=cfg.host,
            options={"USE_DICTIONARY_FOR_RESPONSE_DATA": True},
        )
        self.timeout = cfg.timeout_seconds
        self.max_profiles = min(cfg.batch_size or IMPORT_MAX, IMPORT_MAX)
        self.calls = 0

    def _call(self, fn, *args, **kwargs):
        from openapi_client.exceptions import ApiException

        self.calls += 1
        try:
            return fn(*args, _request_timeout=self.timeout, **kwargs)
        except ApiException as e:
            raise SyncError(
                f"klaviyo: {fn.__name__} answered {e.status}: {_detail(e)}",
                retryable=e.status >= 500 or e.status == 429,
            ) from e

    # --- upserts ---
    def batches(self, rows: list[dict]) -> list[list[dict]]:
        """Import-job sized batches: 10,000 profiles and just under 5 MB each."""
        out, current, size = [], [], 0
        for row in rows:
            n = len(json.dumps(self._profile(row), default=str)) + 2
            if current and (len(current) >= self.max_profiles or size + n > IMPORT_BYTES):
                out.append(current)
                current, size = [], 0
            current.append(row)
            size += n
        if current:
            out.append(current)
        return out

    def upsert(self, target: dict, rows: list[dict]) -> list[Outcome]:
        list_id = required(target, "list_id")
        rows = [r | {"channel": target.get("channel", "email")} for r in rows]
        body = {
            "data": {
                "type": "profile-bulk-import-job",
                "attributes": {"profiles": {"data": [self._profile(r) for r in rows]}},
                "relationships": {"lists": {"data": [{"type": "list", "id": list_id}]}},
            }
        }
        job = self._call(self.api.Profiles.bulk_import_profiles, body)["data"]
        job = self._wait(job["id"])
        errors = self._import_errors(job["id"]) if job["attributes"].get("failed_count") else {}
        out = []
        for i, row in enumerate(rows):
            if i in errors:
                out.append(Outcome(row["customer_id"], "rejected", detail=errors[i]))
            else:
                out.append(Outcome(row["customer_id"], "member"))
        new = [r for i, r in enumerate(rows) if i not in errors and r.get("is_new")]
        for part in chunks(new, SUBSCRIBE_MAX):
            self._call(
                self.api.Profiles.bulk_subscribe_profiles, self._subscriptions(part, list_id, "SUBSCRIBED")
            )
        return out

    def _profile(self, row: dict) -> dict:
        props = {
            k: row.get(k)
            for k in (
                "segment",
                "rfm_segment",
                "lifecycle_stage",
                "churn_band",
                "clv_tier",
                "loyalty_tier",
                "loyalty_points",
                "preferred_store",
                "best_send_hour",
                "best_send_weekday",
            )
        }
        props["recommended_items"] = json.loads(row.get("recommended_items") or "[]")
        attrs = {"external_id": row["customer_id"], "properties": _clean(props)}
        if row.get("channel") == "sms":  # the channel's address only: an SMS audience sends the number
            attrs["phone_number"] = row.get("phone")
        else:
            attrs["email"] = row.get("email")
        for k in ("first_name", "last_name"):
            if row.get(k):
                attrs[k] = row[k]
        return {"type": "profile", "attributes": attrs}

    def _wait(self, job_id: str) -> dict:
        deadline = time.monotonic() + self.cfg.job_timeout_seconds
        while True:
            job = self._call(self.api.Profiles.get_bulk_import_profiles_job, job_id)["data"]
            status = job["attributes"]["status"]
            if status == "complete":
                return job
            if status in ("cancelled", "failed"):
                raise SyncError(f"klaviyo: import job {job_id} ended {status}", retryable=True)
            if time.monotonic() > deadline:
                raise SyncError(
                    f"klaviyo: import job {job_id} still {status} after {self.cfg.job_timeout_seconds:.0f}s",
                    retryable=True,
                )
            time.sleep(self.cfg.poll_seconds)

    def _import_errors(self, job_id: str) -> dict[int, str]:
        """{position in the job: Klaviyo's reason} from the job's import errors (all pages)."""
        errors, cursor = {}, None
        while True:
            kwargs = {"page_cursor": cursor} if cursor else {}
            page = self._call(self.api.Profiles.get_errors_for_bulk_import_profiles_job, job_id, **kwargs)
            for e in page.get("data", []):
                attrs = e["attributes"]
                pointer = (attrs.get("source") or {}).get("pointer", "")
                parts = pointer.split("/")
                if "data" in parts[3:] and len(parts) > 5:
                    errors[int(parts[5])] = f"{attrs.get('title', '')} {attrs.get('detail', '')}".strip()
            cursor = (page.get("links") or {}).get("next")
            if not cursor:
                return errors

    # --- removes ---
    def remove(self, target: dict, rows: list[dict]) -> list[Outcome]:
        list_id = required(target, "list_id")
        channel = target.get("channel", "email")
        rows = [r | {"channel": channel} for r in rows]
        key, field = ("phone", "phone_number") if channel == "sms" else ("email", "email")
        ids = {}
        for part in chunks([r[key] for r in rows if r.get(key)], LOOKUP_MAX):
            quoted = ",".join(json.dumps(e) for e in part)
            page = self._call(
                self.api.Profiles.get_profiles, filter=f"any({field},[{quoted}])", page_size=LOOKUP_MAX
            )
            ids |= {p["attributes"][field]: p["id"] for p in page.get("data", [])}
        found = [ids[r[key]] for r in rows if r.get(key) in ids]
        for part in chunks(found, LIST_MAX):
            self._call(
                self.api.Lists.remove_profiles_from_list,
                list_id,
                {"data": [{"type": "profile", "id": i} for i in part]},
            )
        withdrawn = [r for r in rows if r.get("unsubscribe") and r.get(key)]
        for part in chunks(withdrawn, UNSUBSCRIBE_MAX):
            self._call(
                self.api.Profiles.bulk_unsubscribe_profiles,
                self._subscriptions(part, list_id, "UNSUBSCRIBED"),
            )
        return [Outcome(r["customer_id"], "removed", detail=r.get("reason")) for r in rows]

    # --- messages ---
    def send_events(self, metric: str, rows: list[dict]) -> int:
        """One event of `metric` per message (a flow in Klaviyo sends it): rows carry `message_id`
        (the event's unique id: Klaviyo refuses a repeat), `channel`, the address (`email`, or `phone`
        for SMS), `at` (when it is due) and the message's properties. Bulk jobs of 1,000."""
        for part in chunks(rows, EVENTS_MAX):
            body = {
                "data": {
                    "type": "event-bulk-create-job",
                    "attributes": {
                        "events-bulk-create": {
                            "data": [
                                {
                                    "type": "event-bulk-create",
                                    "attributes": {
                                        "profile": {
                                            "data": {
                                                "type": "profile",
                                                "attributes": (
                                                    {"phone_number": r["phone"]}
                                                    if r["channel"] == "sms"
                                                    else {"email": r["email"]}
                                                )
                                                | {"external_id": r["customer_id"]},
                                            }
                                        },
                                        "events": {
                                            "data": [
                                                {
                                                    "type": "event",
                                                    "attributes": {
                                                        "properties": r["properties"],
                                                        "metric": {
                                                            "data": {
                                                                "type": "metric",
                                                                "attributes": {"name": metric},
                                                            }
                                                        },
                                                        "time": r["at"],
                                                        "unique_id": r["message_id"],
                                                    },
                                                }
                                            ]
                                        },
                                    },
                                }
                                for r in part
                            ]
                        }
                    },
                }
            }
            self._call(self.api.Events.bulk_create_events, body)
        return len(rows)

    def forget(self, emails: list[str], list_id: str | None = None) -> int:
        """Klaviyo's data-privacy deletion (the profile and everything Klaviyo holds about it)."""
        for email in emails:
            body = {
                "data": {
                    "type": "data-privacy-deletion-job",
                    "attributes": {"profile": {"data": {"type": "profile", "attributes": {"email": email}}}},
                }
            }
            self._call(self.api.Data_Privacy.request_profile_deletion, body)
        return len(emails)

    def _subscriptions(self, rows: list[dict], list_id: str, consent: str) -> dict:
        kind = (
            "profile-subscription-bulk-create-job"
            if consent == "SUBSCRIBED"
            else "profile-subscription-bulk-delete-job"
        )
        return {
            "data": {
                "type": kind,
                "attributes": {
                    "profiles": {
                        "data": [
                            {
                                "type": "profile",
                                "attributes": (
                                    {
                                        "phone_number": r["phone"],
                                        "subscriptions": {"sms": {"marketing": {"consent": consent}}},
                                    }
                                    if r.get("channel") == "sms"
                                    else {
                                        "email": r["email"],
                                        "subscriptions": {"email": {"marketing": {"consent": consent}}},
                                    }
                                ),
                            }
                            for r in rows
                        ]
                    }
                },
                "relationships": {"list": {"data": {"type": "list", "id": list_id}}},
            }
        }


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _detail(e) -> str:
    try:
        return "; ".join(x.get("detail", "") for x in json.loads(e.body)["errors"])
    except Exception:  # noqa: BLE001 - whatever the body is, show its start
        return str(e.body or e.reason)[:300]
