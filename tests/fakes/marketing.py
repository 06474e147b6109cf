"""Local stand-ins for the Klaviyo and Mailchimp APIs: the endpoints p13n calls, with their documented
limits, so the exports run through the real SDKs end to end.

Klaviyo (revision 2026-10-15): bulk profile import jobs (at most 10,000 profiles and 5 MB a request,
queued and finished a few polls later, import errors listed per profile), profiles filtered by email,
list relationships added and removed (at most 1,000 a request), subscription create and delete
jobs (1,000 and 100 profiles). Mailchimp (3.0): batch member upserts (at most 500, answered 200 with
per-member errors; unsubscribed or cleaned members are never resubscribed), static segments and their
batch member changes (500 each way), Customer Journeys API-trigger steps (204 for a subscribed member
of the journey's audience, 400 otherwise, 404 for an unknown journey or step).

Both: authentication checked, a request budget per second (429 with Retry-After beyond it), injectable
5xx failures and slow responses. Everything they hold is in memory and inspectable by the tests
(`profiles`, `lists`, `members`, `segments`, `requests`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections import defaultdict, deque
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

KLAVIYO_IMPORT_MAX, KLAVIYO_IMPORT_BYTES = 10_000, 5 * 1024 * 1024
KLAVIYO_LIST_MAX, KLAVIYO_SUBSCRIBE_MAX, KLAVIYO_UNSUBSCRIBE_MAX = 1000, 1000, 100
MAILCHIMP_BATCH_MAX = 500


KLAVIYO_EVENTS_MAX = 1000
E164 = re.compile(r"^\+[1-9]\d{1,14}$")  # Klaviyo takes phone numbers in E.164


class _Limits:
    """Shared behaviour: a per-second request budget, injected failures, slow responses, a log."""

    def __init__(self, per_second: int, retry_after: int = 1):
        self.per_second, self.retry_after = per_second, retry_after
        self.window: deque[float] = deque()
        self.fail_next: list[int] = []  # statuses to answer the next requests with
        self.slow_every, self.slow_seconds = 0, 0.0
        self.requests: list[tuple[str, str]] = []
        self.throttled = 0
        self.lock = threading.Lock()
        self._n = itertools.count(1)

    def gate(self, method: str, path: str) -> Response | None:
        with self.lock:
            n = next(self._n)
            now = time.monotonic()
            while self.window and now - self.window[0] > 1.0:
                self.window.popleft()
            if self.per_second and len(self.window) >= self.per_second:
                self.throttled += 1
                return JSONResponse(
                    self.error(429, "throttled", "Request was throttled."),
                    status_code=429,
                    headers={"Retry-After": str(self.retry_after)},
                )
            self.window.append(now)
            if self.fail_next:
                status = self.fail_next.pop(0)
                return JSONResponse(self.error(status, "error", "Service unavailable"), status_code=status)
            self.requests.append((method, path))
        if self.slow_every and n % self.slow_every == 0:
            time.sleep(self.slow_seconds)
        return None

    def error(self, status: int, code: str, detail: str) -> dict:
        raise NotImplementedError


class FakeKlaviyo(_Limits):
    def __init__(self, api_key: str = "pk_test", per_second: int = 0, job_polls: int = 2):
        super().__init__(per_second)
        self.api_key, self.job_polls = api_key, job_polls
        self.profiles: dict[str, dict] = {}  # email -> {"id", "properties", ...}
        self.lists: dict[str, set[str]] = defaultdict(set)  # list id -> profile ids
        self.subscribed: dict[str, str] = {}  # email -> SUBSCRIBED / UNSUBSCRIBED
        self.sms_subscribed: dict[str, str] = {}  # phone number -> SUBSCRIBED / UNSUBSCRIBED
        self.jobs: dict[str, dict] = {}
        self.imported: list[str] = []  # every email imported, in order (a resend shows twice)
        self.events: list[dict] = []  # every event created: metric, profile, properties, time, unique_id
        self.deleted: list[str] = []  # data-privacy deletions
        self._ids = itertools.count(1)

    def error(self, status: int, code: str, detail: str) -> dict:
        return {
            "errors": [
                {
                    "id": "err",
                    "status": status,
                    "code": code,
                    "title": code,
                    "detail": detail,
                    "source": {"pointer": "/data/"},
                }
            ]
        }

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def limits(request: Request, call_next):
            if request.headers.get("authorization") != f"Klaviyo-API-Key {self.api_key}":
                return JSONResponse(self.error(401, "not_authenticated", "Invalid API key."), status_code=401)
            if not request.headers.get("revision"):
                return JSONResponse(self.error(400, "invalid", "Missing revision header."), status_code=400)
            blocked = self.gate(request.method, request.url.path)
            return blocked or await call_next(request)

        @app.post("/api/profile-bulk-import-jobs")
        async def create_import(request: Request):
            raw = await request.body()
            if len(raw) > KLAVIYO_IMPORT_BYTES:
                return JSONResponse(self.error(413, "too_large", "Payload exceeds 5MB."), status_code=413)
            body = json.loads(raw)
            profiles = body["data"]["attributes"]["profiles"]["data"]
            if len(profiles) > KLAVIYO_IMPORT_MAX:
                return JSONResponse(
                    self.error(400, "invalid", "Cannot import more than 10000 profiles."), status_code=400
                )
            lists = [
                x["id"]
                for x in ((body["data"].get("relationships") or {}).get("lists") or {}).get("data", [])
            ]
            job_id = f"job{next(self._ids)}"
            self.jobs[job_id] = {
                "profiles": [p["attributes"] for p in profiles],
                "lists": lists,
                "polls": 0,
                "errors": [],
                "done": False,
            }
            return JSONResponse({"data": self._job(job_id)}, status_code=202)

        @app.get("/api/profile-bulk-import-jobs/{job_id}")
        def get_job(job_id: str):
            job = self.jobs[job_id]
            job["polls"] += 1
            if job["polls"] >= self.job_polls and not job["done"]:
                self._run_job(job)
            return {"data": self._job(job_id)}

        @app.get("/api/profile-bulk-import-jobs/{job_id}/import-errors")
        def job_errors(job_id: str):
            return {"data": self.jobs[job_id]["errors"], "links": {"self": "", "next": None, "prev": None}}

        @app.get("/api/profiles")
        def get_profiles(request: Request):
            flt = request.query_params.get("filter", "")
            field = "phone_number" if flt.startswith("any(phone_number,") else "email"
            emails = json.loads(flt[flt.index("[") : flt.rindex("]") + 1]) if flt.startswith("any(") else []
            size = int(request.query_params.get("page[size]", 20))
            if size > 100:
                return JSONResponse(
                    self.error(400, "invalid", "page[size] must be at most 100"), status_code=400
                )
            found = [p for p in self.profiles.values() if p.get(field) in set(emails)][:size]
            return {
                "data": [
                    {
                        "type": "profile",
                        "id": p["id"],
                        "attributes": {"email": p.get("email"), "phone_number": p.get("phone_number")},
                    }
                    for p in found
                ],
                "links": {"self": "", "next": None, "prev": None},
            }

        @app.post("/api/lists/{list_id}/relationships/profiles")
        async def add_to_list(list_id: str, request: Request):
            ids = [x["id"] for x in (await request.json())["data"]]
            if len(ids) > KLAVIYO_LIST_MAX:
                return JSONResponse(self.error(400, "invalid", "At most 1000 profiles."), status_code=400)
            self.lists[list_id].update(ids)
            return Response(status_code=204)

        @app.delete("/api/lists/{list_id}/relationships/profiles")
        async def remove_from_list(list_id: str, request: Request):
            ids = [x["id"] for x in (await request.json())["data"]]
            if len(ids) > KLAVIYO_LIST_MAX:
                return JSONResponse(self.error(400, "invalid", "At most 1000 profiles."), status_code=400)
            self.lists[list_id].difference_update(ids)
            return Response(status_code=204)

        @app.post("/api/event-bulk-create-jobs")
        async def create_events(request: Request):
            """At most 1,000 profiles a job; each names the profile by email or E.164 number; a unique id
            repeated for the same profile and metric fails the whole request (Klaviyo's rule)."""
            entries = (await request.json())["data"]["attributes"]["events-bulk-create"]["data"]
            if len(entries) > KLAVIYO_EVENTS_MAX:
                return JSONResponse(self.error(400, "invalid", "At most 1000 profiles."), status_code=400)
            new = []
            seen = {(e["profile"], e["metric"], e["unique_id"]) for e in self.events}
            for i, entry in enumerate(entries):
                profile = entry["attributes"]["profile"]["data"]["attributes"]
                who = profile.get("email") or profile.get("phone_number") or ""
                if not ("@" in who or E164.match(who)):
                    return JSONResponse(
                        self.error(400, "invalid", f"entry {i}: a profile needs an email or a phone number"),
                        status_code=400,
                    )
                for ev in entry["attributes"]["events"]["data"]:
                    a = ev["attributes"]
                    key = (who, a["metric"]["data"]["attributes"]["name"], a.get("unique_id"))
                    if key in seen:
                        return JSONResponse(
                            self.error(409, "duplicate", f"entry {i}: unique_id {key[2]} already used"),
                            status_code=409,
                        )
                    seen.add(key)
                    new.append(
                        {
                            "profile": who,
                            "metric": key[1],
                            "unique_id": key[2],
                            "properties": a["properties"],
                            "time": a.get("time"),
                        }
                    )
            self.events += new
            return Response(status_code=202)

        @app.post("/api/profile-subscription-bulk-create-jobs")
        async def subscribe(request: Request):
            profiles = (await request.json())["data"]["attributes"]["profiles"]["data"]
            if len(profiles) > KLAVIYO_SUBSCRIBE_MAX:
                return JSONResponse(self.error(400, "invalid", "At most 1000 profiles."), status_code=400)
            for i, p in enumerate(profiles):
                bad = self._subscription_error(i, p["attributes"])
                if bad:
                    return JSONResponse(bad, status_code=400)
            for p in profiles:
                for channel, sub in p["attributes"]["subscriptions"].items():
                    if channel == "sms":
                        self.sms_subscribed[p["attributes"]["phone_number"]] = sub["marketing"]["consent"]
                    else:
                        self.subscribed[p["attributes"]["email"]] = sub["marketing"]["consent"]
            return Response(status_code=202)

        @app.post("/api/data-privacy-deletion-jobs")
        async def privacy_delete(request: Request):
            attrs = (await request.json())["data"]["attributes"]["profile"]["data"]["attributes"]
            profile = self.profiles.pop(attrs.get("email"), None)
            if profile:
                for members in self.lists.values():
                    members.discard(profile["id"])
            self.subscribed.pop(attrs.get("email"), None)
            self.deleted.append(attrs.get("email"))
            return Response(status_code=202)

        @app.post("/api/profile-subscription-bulk-delete-jobs")
        async def unsubscribe(request: Request):
            profiles = (await request.json())["data"]["attributes"]["profiles"]["data"]
            if len(profiles) > KLAVIYO_UNSUBSCRIBE_MAX:
                return JSONResponse(self.error(400, "invalid", "At most 100 profiles."), status_code=400)
            for p in profiles:
                if "sms" in p["attributes"].get("subscriptions", {}):
                    self.sms_subscribed[p["attributes"]["phone_number"]] = "UNSUBSCRIBED"
                else:
                    self.subscribed[p["attributes"]["email"]] = "UNSUBSCRIBED"
            return Response(status_code=202)

        return app

    def _subscription_error(self, i: int, attrs: dict) -> dict | None:
        """Klaviyo's 400 for a subscription without the identifier its channel needs: an email address
        for email, a phone number in E.164 for SMS."""
        subs = attrs.get("subscriptions") or {}
        if "sms" in subs and not E164.match(attrs.get("phone_number") or ""):
            return self.error(
                400, "invalid", f"profile {i}: SMS consent needs a phone_number in E.164 format"
            )
        if "email" in subs and "@" not in (attrs.get("email") or ""):
            return self.error(400, "invalid", f"profile {i}: email consent needs an email address")
        return None

    def _run_job(self, job: dict) -> None:
        for i, attrs in enumerate(job["profiles"]):
            email = attrs.get("email") or ""
            phone = attrs.get("phone_number")
            if phone is not None and not E164.match(phone):
                job["errors"].append(
                    _import_error(
                        i, attrs, "phone_number", f"Invalid phone number: {phone!r} (E.164 expected)"
                    )
                )
                continue
            if phone and not email:  # an SMS-only profile: known by its number
                profile = self.profiles.setdefault(phone, {"id": f"01K{next(self._ids):08d}"})
                profile.update(attrs)
                self.imported.append(phone)
                for lst in job["lists"]:
                    self.lists[lst].add(profile["id"])
                continue
            if "@" not in email:
                job["errors"].append(_import_error(i, attrs, "email", f"Invalid email address: {email!r}"))
                continue
            profile = self.profiles.setdefault(email, {"id": f"01K{next(self._ids):08d}", "email": email})
            profile.update({k: v for k, v in attrs.items() if k != "email"})
            self.imported.append(email)
            for lst in job["lists"]:
                self.lists[lst].add(profile["id"])
        job["done"] = True

    def _job(self, job_id: str) -> dict:
        job = self.jobs[job_id]
        n = len(job["profiles"])
        failed = len(job["errors"])
        return {
            "type": "profile-bulk-import-job",
            "id": job_id,
            "attributes": {
                "status": "complete" if job["done"] else ("processing" if job["polls"] else "queued"),
                "total_count": n,
                "completed_count": n - failed if job["done"] else 0,
                "failed_count": failed,
                "created_at": "2026-01-01T00:00:00+00:00",
                "completed_at": "2026-01-01T00:00:01+00:00" if job["done"] else None,
                "expires_at": "2026-01-08T00:00:00+00:00",
                "started_at": "2026-01-01T00:00:00+00:00",
            },
            "links": {"self": f"/api/profile-bulk-import-jobs/{job_id}"},
        }

    def list_emails(self, list_id: str) -> set[str]:
        by_id = {p["id"]: e for e, p in self.profiles.items()}
        return {by_id[i] for i in self.lists[list_id]}


class FakeMailchimp(_Limits):
    def __init__(self, api_key: str = "key-us1", per_second: int = 0):
        super().__init__(per_second)
        self.api_key = api_key
        self.members: dict[str, dict[str, dict]] = defaultdict(dict)  # list -> email -> member
        self.segments: dict[str, dict[int, dict]] = defaultdict(dict)  # list -> id -> {name, emails}
        self.upserted: list[str] = []
        self.deleted: list[str] = []
        self.journeys: dict[tuple[int, int], str] = {}  # (journey id, step id) -> its audience
        self.triggered: list[tuple[int, int, str]] = []
        self._ids = itertools.count(1)

    def error(self, status: int, code: str, detail: str) -> dict:
        return {
            "type": "https://mailchimp.com/developer/marketing/docs/errors/",
            "title": code,
            "status": status,
            "detail": detail,
            "instance": "",
        }

    def unsubscribe(self, list_id: str, email: str) -> None:
        """What a recipient's unsubscribe link does."""
        self.members[list_id][email]["status"] = "unsubscribed"

    def app(self) -> FastAPI:
        import base64

        app = FastAPI()
        expected = "Basic " + base64.b64encode(f"user:{self.api_key}".encode()).decode()

        @app.middleware("http")
        async def limits(request: Request, call_next):
            if request.headers.get("authorization") != expected:
                return JSONResponse(
                    self.error(401, "API Key Invalid", "Your API key may be invalid."), status_code=401
                )
            blocked = self.gate(request.method, request.url.path)
            return blocked or await call_next(request)

        @app.post("/3.0/lists/{list_id}")
        async def batch(list_id: str, request: Request):
            body = await request.json()
            members = body.get("members", [])
            if len(members) > MAILCHIMP_BATCH_MAX:
                return JSONResponse(
                    self.error(400, "Invalid Resource", "You can only batch 500 members at a time."),
                    status_code=400,
                )
            new, updated, errors = [], [], []
            book = self.members[list_id]
            for m in members:
                email = (m.get("email_address") or "").lower()
                if "@" not in email:
                    errors.append(
                        {
                            "email_address": m.get("email_address"),
                            "error": f"{email} looks fake or invalid, please enter a real email address.",
                            "error_code": "ERROR_GENERIC",
                        }
                    )
                    continue
                current = book.get(email)
                if (
                    current
                    and current["status"] in ("unsubscribed", "cleaned")
                    and m.get("status") == "subscribed"
                ):
                    errors.append(
                        {
                            "email_address": email,
                            "error": (
                                f"{email} is in a compliance state due to unsubscribe, bounce, or "
                                "compliance review and cannot be subscribed."
                            ),
                            "error_code": "ERROR_CONTACT_EXISTS",
                        }
                    )
                    continue
                if current and not body.get("update_existing"):
                    errors.append(
                        {
                            "email_address": email,
                            "error": f"{email} is already a list member.",
                            "error_code": "ERROR_CONTACT_EXISTS",
                        }
                    )
                    continue
                member = current or {"id": hashlib.md5(email.encode()).hexdigest(), "email_address": email}
                member["status"] = m.get("status", member.get("status", "subscribed"))
                member["merge_fields"] = {**member.get("merge_fields", {}), **(m.get("merge_fields") or {})}
                book[email] = member
                self.upserted.append(email)
                (updated if current else new).append(
                    {"id": member["id"], "email_address": email, "status": member["status"]}
                )
            return {
                "new_members": new,
                "updated_members": updated,
                "errors": errors,
                "total_created": len(new),
                "total_updated": len(updated),
                "error_count": len(errors),
            }

        @app.post("/3.0/customer-journeys/journeys/{journey_id}/steps/{step_id}/actions/trigger")
        async def trigger(journey_id: int, step_id: int, request: Request):
            list_id = self.journeys.get((journey_id, step_id))
            if list_id is None:
                return JSONResponse(
                    self.error(404, "Resource Not Found", "The requested resource could not be found."),
                    status_code=404,
                )
            email = ((await request.json()).get("email_address") or "").lower()
            member = self.members[list_id].get(email)
            if not member or member["status"] != "subscribed":
                return JSONResponse(
                    self.error(400, "Bad Request", f"{email} is not subscribed to the journey's audience."),
                    status_code=400,
                )
            self.triggered.append((journey_id, step_id, email))
            return Response(status_code=204)

        @app.post("/3.0/lists/{list_id}/members/{subscriber_hash}/actions/delete-permanent")
        def delete_permanent(list_id: str, subscriber_hash: str):
            book = self.members[list_id]
            email = next((e for e, m in book.items() if m["id"] == subscriber_hash), None)
            if email is None:
                return JSONResponse(
                    self.error(404, "Resource Not Found", "The requested resource could not be found."),
                    status_code=404,
                )
            del book[email]
            for seg in self.segments[list_id].values():
                seg["emails"].discard(email)
            self.deleted.append(email)
            return Response(status_code=204)

        @app.get("/3.0/lists/{list_id}/segments")
        def list_segments(list_id: str):
            segs = [
                {"id": i, "name": s["name"], "type": "static", "member_count": len(s["emails"])}
                for i, s in self.segments[list_id].items()
            ]
            return {"segments": segs, "list_id": list_id, "total_items": len(segs)}

        @app.post("/3.0/lists/{list_id}/segments")
        async def create_segment(list_id: str, request: Request):
            body = await request.json()
            sid = next(self._ids)
            self.segments[list_id][sid] = {
                "name": body["name"],
                "emails": set(body.get("static_segment") or []),
            }
            return {"id": sid, "name": body["name"], "type": "static", "member_count": 0, "list_id": list_id}

        @app.post("/3.0/lists/{list_id}/segments/{segment_id}")
        async def segment_members(list_id: str, segment_id: int, request: Request):
            body = await request.json()
            add, remove = body.get("members_to_add", []), body.get("members_to_remove", [])
            if len(add) > MAILCHIMP_BATCH_MAX or len(remove) > MAILCHIMP_BATCH_MAX:
                return JSONResponse(
                    self.error(400, "Invalid Resource", "At most 500 members each way."), status_code=400
                )
            seg = self.segments[list_id][segment_id]
            book = self.members[list_id]
            missing = [e for e in add if e.lower() not in book]
            added = [e.lower() for e in add if e.lower() in book]
            removed = [e.lower() for e in remove if e.lower() in seg["emails"]]
            seg["emails"].update(added)
            seg["emails"].difference_update(removed)
            errors = (
                [{"email_addresses": missing, "error": "Email addresses are not list members."}]
                if missing
                else []
            )
            return {
                "members_added": [{"email_address": e} for e in added],
                "members_removed": [{"email_address": e} for e in removed],
                "errors": errors,
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": len(missing),
            }

        return app

    def segment_emails(self, list_id: str, name: str) -> set[str]:
        return next((s["emails"] for s in self.segments[list_id].values() if s["name"] == name), set())

    def status(self, list_id: str, email: str) -> str | None:
        m = self.members[list_id].get(email)
        return m and m["status"]


@contextmanager
def serve(fake):
    """Run a fake's app on a free loopback port; yields its base URL."""
    import uvicorn

    from p13n.services.kafka import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _import_error(i: int, attrs: dict, field: str, detail: str) -> dict:
    """An import job's error for profile `i` of the job, as Klaviyo lists them."""
    return {
        "type": "import-error",
        "id": f"e{i}",
        "attributes": {
            "code": "invalid",
            "title": "Invalid input.",
            "detail": detail,
            "source": {"pointer": f"/data/attributes/profiles/data/{i}/attributes/{field}"},
            "original_payload": attrs,
        },
    }
