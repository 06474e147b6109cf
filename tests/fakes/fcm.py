"""A local stand-in for Firebase Cloud Messaging's HTTP v1 API and Google's OAuth 2.0 token endpoint,
with their documented behaviour, so push runs through google-auth and real HTTP end to end.

* `POST /token`: the service account's JWT bearer grant (RFC 7523). The assertion's signature is
  checked against the service account's public key, its audience (Google's token endpoint) and its
  scope against `firebase.messaging`; the answer is a bearer token valid for `token_seconds`.
* `POST /v1/projects/{project}/messages:send`: a bearer token this server issued and not expired
  (else 401 UNAUTHENTICATED), the project it serves (else 403 SENDER_ID_MISMATCH), exactly one
  target, data values as strings and no reserved data key, a payload of at most 4,096 bytes (else
  400 INVALID_ARGUMENT), a registered token (else 404 UNREGISTERED), a request budget per second
  (429 QUOTA_EXCEEDED with Retry-After), injectable 5xx (503 UNAVAILABLE). Errors have FCM's shape:
  `{"error": {"code", "message", "status", "details": [{"@type": ...FcmError, "errorCode"}]}}`.

What it holds is inspectable: `messages` (accepted), `requests`, `tokens_issued`.
"""

from __future__ import annotations

import itertools
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from fakes.marketing import _Limits

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
AUDIENCE = "https://oauth2.googleapis.com/token"  # google-auth signs for Google's endpoint, wherever it posts
PAYLOAD_MAX = 4096
RESERVED = ("from", "notification", "message_type")
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def service_account(token_uri: str, project: str = "p13n-demo") -> tuple[dict, bytes]:
    """A service account file's content (with a fresh RSA key) and the key's public PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": f"push@{project}.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    return info, public


class FakeFCM(_Limits):
    def __init__(self, public_key: bytes, project: str = "p13n-demo", per_second: int = 0, tokens=()):
        super().__init__(per_second)
        self.public_key, self.project = public_key, project
        self.registered: set[str] = set(tokens)
        self.messages: list[dict] = []
        self.tokens_issued: dict[str, float] = {}  # bearer token -> expiry (monotonic)
        self.token_seconds = 3600
        self._ids = itertools.count(1)

    def error(self, status: int, code: str, detail: str) -> dict:
        names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}
        names |= {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
        codes = {429: "QUOTA_EXCEEDED", 503: "UNAVAILABLE", 500: "INTERNAL"}
        error_code = codes.get(status, code) if code in ("throttled", "error") else code
        return {
            "error": {
                "code": status,
                "message": detail,
                "status": names.get(status, "UNKNOWN"),
                "details": [{"@type": FCM_ERROR, "errorCode": error_code}],
            }
        }

    def _fail(self, status: int, code: str, detail: str) -> JSONResponse:
        return JSONResponse(self.error(status, code, detail), status_code=status)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/token")
        async def token(request: Request):
            from google.auth import jwt

            form = await request.form()
            if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            try:
                claims = jwt.decode(form.get("assertion", ""), certs=self.public_key, audience=AUDIENCE)
            except ValueError as e:
                return JSONResponse({"error": "invalid_grant", "error_description": str(e)}, status_code=400)
            if SCOPE not in claims.get("scope", "").split():
                return JSONResponse({"error": "invalid_scope"}, status_code=400)
            bearer = f"ya29.fake-{next(self._ids)}"
            self.tokens_issued[bearer] = time.monotonic() + self.token_seconds
            return {"access_token": bearer, "expires_in": self.token_seconds, "token_type": "Bearer"}

        @app.post("/v1/projects/{project}/messages:send")
        async def send(project: str, request: Request):
            throttled = self.gate("POST", request.url.path)
            if throttled is not None:
                return throttled
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            if self.tokens_issued.get(bearer, 0) < time.monotonic():
                return self._fail(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            if project != self.project:
                return self._fail(403, "SENDER_ID_MISMATCH", f"Permission denied on project {project}.")
            try:
                message = (await request.json())["message"]
            except (ValueError, KeyError, TypeError):
                return self._fail(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
            return self._check(message)

        return app

    def _check(self, message: dict) -> Response:
        targets = [k for k in ("token", "topic", "condition") if message.get(k)]
        if len(targets) != 1:
            return self._fail(400, "INVALID_ARGUMENT", "Exactly one of token, topic or condition.")
        data = message.get("data") or {}
        for key, value in data.items():
            if key in RESERVED or key.startswith(("google.", "gcm.")):
                return self._fail(400, "INVALID_ARGUMENT", f"Invalid data payload key: {key}")
            if not isinstance(value, str):
                return self._fail(400, "INVALID_ARGUMENT", f"Invalid value at 'message.data[{key}]'")
        size = len(json.dumps({"notification": message.get("notification"), "data": data}).encode())
        if size > PAYLOAD_MAX:
            return self._fail(400, "INVALID_ARGUMENT", "Message is too big.")
        if message.get("token") and message["token"] not in self.registered:
            return self._fail(404, "UNREGISTERED", "Requested entity was not found.")
        with self.lock:
            self.messages.append(message)
            n = len(self.messages)
        return JSONResponse({"name": f"projects/{self.project}/messages/0:{n}"})
