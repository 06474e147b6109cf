"""Push through Firebase Cloud Messaging's HTTP v1 API.

* **One message a request**: `POST {host}/v1/projects/{project}/messages:send` with
  `{"message": {"token", "notification", "data"}}`. FCM's batch endpoint was shut down in 2024, so
  messages go out over `activation.fcm.workers` connections at once.
* **OAuth 2.0**: the service account file named by `activation.fcm.credential_env`
  (`GOOGLE_APPLICATION_CREDENTIALS`, as Google's libraries read it) mints short-lived access tokens
  for the `firebase.messaging` scope through google-auth, refreshed when they expire. The file is
  read, never logged or copied.
* **Limits checked before sending**: the payload (notification and data) at most 4,096 bytes; data
  values are strings and no data key is reserved (`from`, `notification`, `message_type`, or
  starting with `google.` or `gcm.`).
* **Errors**: a token FCM no longer knows (404 `UNREGISTERED`) or a message it refuses (400
  `INVALID_ARGUMENT`) is that message's outcome, never retried; 429 (`QUOTA_EXCEEDED`), 500 and 503
  are retried with exponential backoff that waits out `Retry-After` (`max_retries`,
  `max_backoff_seconds`), then the message is `failed` (left for the next dispatch); 401 and 403
  (the credentials, the project) stop the dispatch, naming why.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from p13n.activation.sync import SyncError

HOST = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
PAYLOAD_MAX = 4096
RESERVED = ("from", "notification", "message_type")


@dataclass(frozen=True)
class Result:
    token: str
    status: str  # sent | unregistered | invalid | failed (retries spent: worth trying later)
    detail: str = ""  # FCM's message name when sent, else why not


def payload(token: str, data: dict[str, str], title: str = "", body: str = "") -> dict:
    """The HTTP v1 message for one device; a ValueError says which documented limit it breaks."""
    for key, value in data.items():
        if key in RESERVED or key.startswith(("google.", "gcm.")):
            raise ValueError(f"data key {key!r} is reserved by FCM")
        if not isinstance(value, str):
            raise ValueError(f"data value of {key!r} is not a string")
    message: dict = {"token": token, "data": data}
    if title or body:
        message["notification"] = {"title": title, "body": body}
    size = len(json.dumps({"notification": message.get("notification"), "data": data}).encode())
    if size > PAYLOAD_MAX:
        raise ValueError(f"payload of {size:,} bytes is over FCM's {PAYLOAD_MAX:,}")
    return {"message": message}


def _error(response) -> tuple[str, str]:
    """(FCM's error code, its message) from an error response."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return str(response.status_code), response.text[:200]
    code = error.get("status", "")
    for detail in error.get("details") or []:
        code = detail.get("errorCode") or code
    return code, error.get("message", "")


class FCM:
    name = "fcm"

    def __init__(self, settings, credentials_path: str):
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account

        cfg = settings.activation.fcm
        self.cfg = cfg
        try:
            self.credentials = service_account.Credentials.from_service_account_file(
                credentials_path, scopes=[SCOPE]
            )
        except (OSError, ValueError, KeyError) as e:
            raise SyncError(
                f"fcm: the service account file named by {cfg.credential_env} cannot be read: "
                f"{type(e).__name__}",
                retryable=False,
            ) from e
        self.url = f"{(cfg.host or HOST).rstrip('/')}/v1/projects/{cfg.project_id}/messages:send"
        self._request = Request()
        self._local = threading.local()
        self._lock = threading.Lock()
        self.calls = 0

    def _session(self):
        from google.auth.transport.requests import AuthorizedSession

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = AuthorizedSession(self.credentials)
        return session

    def _token(self) -> None:
        with self._lock:  # one refresh for every thread, not one each
            if not self.credentials.valid:
                try:
                    self.credentials.refresh(self._request)
                except Exception as e:  # noqa: BLE001 - google-auth raises its own and transport errors
                    raise SyncError(f"fcm: no access token: {type(e).__name__}: {e}", retryable=False) from e

    def send(self, message: dict) -> Result:
        """Send one message (as `payload` built it); retries what FCM says is worth retrying."""
        import requests

        token = message["message"]["token"]
        for attempt in range(self.cfg.max_retries + 1):
            self._token()
            try:
                response = self._session().post(self.url, json=message, timeout=self.cfg.timeout_seconds)
            except requests.RequestException as e:
                status, code, text, wait = 0, type(e).__name__, str(e), None
            else:
                with self._lock:
                    self.calls += 1
                status = response.status_code
                if status == 200:
                    return Result(token, "sent", response.json().get("name", ""))
                code, text = _error(response)
                wait = response.headers.get("Retry-After")
            if status == 404 or code == "UNREGISTERED":
                return Result(token, "unregistered", f"{code}: {text}")
            if status == 400:
                return Result(token, "invalid", f"{code}: {text}")
            if status in (401, 403):
                raise SyncError(f"fcm: answered {status} {code}: {text}", retryable=False)
            if attempt == self.cfg.max_retries:
                return Result(token, "failed", f"{status or 'no response'} {code} after {attempt + 1} tries")
            delay = float(wait) if wait and wait.isdigit() else 0.5 * 2**attempt * (1 + random.random())
            time.sleep(min(delay, self.cfg.max_backoff_seconds))
        raise AssertionError("unreachable")  # the loop returns on its last attempt

    def send_all(self, messages: list[dict]) -> list[Result]:
        """Send many at once (`workers` in flight); results in the messages' order."""
        if not messages:
            return []
        self._token()
        with ThreadPoolExecutor(max_workers=self.cfg.workers, thread_name_prefix="fcm") as pool:
            return list(pool.map(self.send, messages))
