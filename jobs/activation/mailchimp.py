"""Mailchimp through its official SDK (`mailchimp-marketing`), with what the SDK lacks added.

* The SDK calls HTTP with no retries: `_RetryingRequests` wraps its transport, retrying 429, 5xx and
  connection errors with exponential backoff that honours Retry-After (`activation.mailchimp.
  max_retries`, `max_backoff_seconds`); every call has `timeout_seconds`.
* Upserts: batch member upserts (at most 500 a call), merge fields for the templates
  (FNAME, LNAME, SEGMENT, STAGE, CLVTIER, POINTS, STORE, SENDHOUR, REC1NAME...). Mailchimp answers
  200 with per-member errors: those are recorded per customer. A member Mailchimp holds as
  unsubscribed or cleaned is never resubscribed: Mailchimp refuses it ("compliance state"), p13n
  records the member as `blocked` and never sends them again.
* The audience is a static segment (by name, created when missing) of the list: members are added
  to and removed from it, 500 each way a call. A member whose consent was revoked (or who was erased)
  is also set to unsubscribed.
* Trigger and journey emails (with `cadence.email_platform: mailchimp`): each template's Customer
  Journey API-trigger step is started per contact (`trigger_journey`).
"""

from __future__ import annotations

import hashlib
import json
import random
import time

from p13n.activation.sync import Outcome, SyncError, chunks, required

BATCH_MAX = 500
_RETRY = {429, 500, 502, 503, 504}


class _RetryingRequests:
    """Replaces the SDK client's `request`: the same call, retried like a careful client would."""

    def __init__(self, request, max_retries: int, max_backoff: float, sleep=time.sleep):
        self.request, self.max_retries, self.max_backoff, self.sleep = (
            request,
            max_retries,
            max_backoff,
            sleep,
        )
        self.retries = 0

    def __call__(self, method, url, query_params=None, headers=None, body=None):
        import requests

        for attempt in range(self.max_retries + 1):
            try:
                res = self.request(method, url, query_params, headers=headers, body=body)
            except (requests.ConnectionError, requests.Timeout):
                if attempt == self.max_retries:
                    raise
                res = None
            if res is not None and res.status_code not in _RETRY:
                return res
            if attempt == self.max_retries:
                return res
            self.retries += 1
            wait = min(self.max_backoff, 0.5 * 2**attempt) * (0.5 + random.random() / 2)
            if res is not None and res.headers.get("Retry-After", "").isdigit():
                wait = max(wait, float(res.headers["Retry-After"]))
            self.sleep(wait)
        raise AssertionError("unreachable")


class Mailchimp:
    name = "mailchimp"

    def __init__(self, settings, api_key: str):
        import mailchimp_marketing

        cfg = settings.activation.mailchimp
        self.client = mailchimp_marketing.Client()
        config = {"api_key": api_key, "timeout": cfg.timeout_seconds}
        if cfg.server:
            config["server"] = cfg.server
        self.client.set_config(config)
        if cfg.host:
            self.client.api_client.host = cfg.host.rstrip("/") + "/3.0"
        api_client = self.client.api_client
        self.transport = _RetryingRequests(api_client.request, cfg.max_retries, cfg.max_backoff_seconds)
        api_client.request = self.transport
        self._segments: dict[tuple[str, str], int] = {}
        self.max_members = min(cfg.batch_size or BATCH_MAX, BATCH_MAX)
        self.calls = 0

    def _call(self, fn, *args, **kwargs):
        from mailchimp_marketing.api_client import ApiClientError

        self.calls += 1
        try:
            return fn(*args, **kwargs)
        except ApiClientError as e:
            status = getattr(e, "status_code", None) or 0
            raise SyncError(
                f"mailchimp: {fn.__name__} answered {status}: {_detail(e.text)}",
                retryable=status in _RETRY or status == 0,
            ) from e

    def batches(self, rows: list[dict]) -> list[list[dict]]:
        return list(chunks(rows, self.max_members))

    def upsert(self, target: dict, rows: list[dict]) -> list[Outcome]:
        list_id = required(target, "list_id")
        segment = self._segment(list_id, required(target, "segment"))
        body = {"members": [self._member(r) for r in rows], "update_existing": True}
        answer = self._call(self.client.lists.batch_list_members, list_id, body)
        failed = {}
        for err in answer.get("errors", []):
            email = (err.get("email_address") or "").lower()
            blocked = "compliance state" in (err.get("error") or "")
            failed[email] = ("blocked" if blocked else "rejected", err.get("error") or err.get("error_code"))
        ok = [r["email"] for r in rows if r["email"].lower() not in failed]
        if ok:
            answer = self._call(
                self.client.lists.batch_segment_members,
                {"members_to_add": ok, "members_to_remove": []},
                list_id,
                segment,
            )
        out = []
        for r in rows:
            status, detail = failed.get(r["email"].lower(), ("member", None))
            out.append(
                Outcome(r["customer_id"], status, remote_id=_subscriber_hash(r["email"]), detail=detail)
            )
        return out

    def remove(self, target: dict, rows: list[dict]) -> list[Outcome]:
        list_id = required(target, "list_id")
        segment = self._segment(list_id, required(target, "segment"))
        emails = [r["email"] for r in rows if r.get("email")]
        for part in chunks(emails, self.max_members):
            self._call(
                self.client.lists.batch_segment_members,
                {"members_to_add": [], "members_to_remove": part},
                list_id,
                segment,
            )
        withdrawn = [
            {"email_address": r["email"], "status": "unsubscribed"}
            for r in rows
            if r.get("unsubscribe") and r.get("email")
        ]
        for part in chunks(withdrawn, self.max_members):
            self._call(
                self.client.lists.batch_list_members, list_id, {"members": part, "update_existing": True}
            )
        return [Outcome(r["customer_id"], "removed", detail=r.get("reason")) for r in rows]

    def forget(self, emails: list[str], list_id: str | None = None) -> int:
        """Mailchimp's permanent delete of the list member (it cannot be re-imported afterwards)."""
        if not list_id:
            return 0
        from mailchimp_marketing.api_client import ApiClientError

        n = 0
        for email in emails:
            try:
                self.client.lists.delete_list_member_permanent(list_id, _subscriber_hash(email))
                n += 1
            except ApiClientError as e:
                if getattr(e, "status_code", None) != 404:  # not a member: nothing to delete
                    raise SyncError(
                        f"mailchimp: permanent delete answered {e.status_code}: {_detail(e.text)}"
                    ) from e
        return n

    def trigger_journey(self, step, emails: list[str]) -> dict[str, tuple[str, str]]:
        """Start a Customer Journey's API-trigger step (`step`: a MailchimpStep) for each email.
        Mailchimp triggers only members of the journey's audience: those not yet members are added
        as subscribed first (their consent is on record), and a member Mailchimp holds as
        unsubscribed or cleaned is never resubscribed (`blocked`). Returns email -> (status, detail),
        status `sent`, `blocked` or `rejected`; a journey or step Mailchimp does not know stops the
        dispatch, naming both ids."""
        from mailchimp_marketing.api_client import ApiClientError

        out: dict[str, tuple[str, str]] = {}
        for part in chunks(emails, self.max_members):
            body = {"members": [{"email_address": e, "status": "subscribed"} for e in part]}
            answer = self._call(self.client.lists.batch_list_members, step.list_id, body)
            for err in answer.get("errors", []):
                text = err.get("error") or err.get("error_code") or ""
                if "already a list member" in text:
                    continue
                email = err.get("email_address") or ""
                kind = "blocked" if "compliance state" in text else "rejected"
                out[email.lower()] = (kind, _anonymous(text, email))
        for email in emails:
            if email.lower() in out:
                continue
            self.calls += 1
            try:
                self.client.customerJourneys.trigger(step.journey_id, step.step_id, {"email_address": email})
            except ApiClientError as e:
                status = getattr(e, "status_code", None) or 0
                if status == 400:
                    out[email.lower()] = ("rejected", _anonymous(_detail(e.text), email))
                    continue
                raise SyncError(
                    f"mailchimp: journey {step.journey_id} step {step.step_id} answered {status}: "
                    f"{_detail(e.text)}",
                    retryable=status in _RETRY or status == 0,
                ) from e
            out[email.lower()] = ("sent", f"journey {step.journey_id} step {step.step_id}")
        return out

    def _segment(self, list_id: str, name: str) -> int:
        key = (list_id, name)
        if key not in self._segments:
            found = self._call(self.client.lists.list_segments, list_id, count=1000, type="static")
            ids = {s["name"]: s["id"] for s in found.get("segments", [])}
            if name not in ids:
                ids[name] = self._call(
                    self.client.lists.create_segment, list_id, {"name": name, "static_segment": []}
                )["id"]
            self._segments[key] = ids[name]
        return self._segments[key]

    @staticmethod
    def _member(row: dict) -> dict:
        merge = {
            "FNAME": row.get("first_name"),
            "LNAME": row.get("last_name"),
            "SEGMENT": row.get("segment"),
            "STAGE": row.get("lifecycle_stage"),
            "CLVTIER": row.get("clv_tier"),
            "POINTS": row.get("loyalty_points"),
            "STORE": row.get("preferred_store"),
            "SENDHOUR": row.get("best_send_hour"),
        }
        for i, item in enumerate(json.loads(row.get("recommended_items") or "[]"), 1):
            merge |= {
                f"REC{i}NAME": item.get("name"),
                f"REC{i}IMG": item.get("image"),
                f"REC{i}PRICE": item.get("price"),
                f"REC{i}URL": item.get("url"),
            }
        merge = {k: ("" if v is None else v) for k, v in merge.items()}
        return {"email_address": row["email"], "status": "subscribed", "merge_fields": merge}


def _anonymous(text: str, email: str) -> str:
    """Mailchimp's message without the address it names (the outcome lands in ops tables)."""
    import re

    return re.sub(re.escape(email), "the contact", text, flags=re.IGNORECASE) if email else text


def _subscriber_hash(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()  # Mailchimp's member id, not a security use


def _detail(text) -> str:
    try:
        body = json.loads(text) if isinstance(text, str) else text
        return f"{body.get('title', '')}: {body.get('detail', '')}"
    except Exception:  # noqa: BLE001
        return str(text)[:300]
