"""`p13n bench activation`: audience export throughput to the local fake Klaviyo and Mailchimp servers.

For each platform, in the same run against the same fake server:
* `<platform>_profiles_per_s`: a full first sync of an audience of every consenting customer (the
  audience query, the plan against the state, the SDK calls, import jobs polled, the state merged
  after each batch);
* `<platform>_bare_per_s`: the same profiles sent by a bare loop of the SDK's batch call alone
  (payloads built beforehand, no state);
* `<platform>_export_ratio` = the first ÷ the second (what the bookkeeping costs);
* `<platform>_resync_s`: a second sync with nothing changed (the plan finds nothing to send).
The fakes answer at once (no rate limit): the figures are p13n's side, not the platforms'.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def bench_activation(rows: int | None = None, reps: int = 1) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from fakes.marketing import FakeKlaviyo, FakeMailchimp, serve

    from p13n.activation.audiences import candidates
    from p13n.activation.klaviyo import Klaviyo
    from p13n.activation.mailchimp import Mailchimp
    from p13n.activation.sync import sync
    from p13n.bench.serving import AS_OF, write_gold
    from p13n.config import AudienceSettings, load_settings
    from p13n.lake.duck import duckdb_connection

    n = rows or 50_000
    work = Path(tempfile.mkdtemp(prefix="p13n-bench-activation-"))
    print(f"bench activation: synthetic gold tables for {n:,} customers", flush=True)
    write_gold(str(work / "lake"), n, 5000)
    out: dict = {"customers": n}
    for platform, fake, key in (
        ("klaviyo", FakeKlaviyo("pk_bench", job_polls=1), "pk_bench"),
        ("mailchimp", FakeMailchimp("key-us1"), "key-us1"),
    ):
        with serve(fake) as url:
            env = {
                "P13N_DATA_DIR": str(work),
                f"P13N__ACTIVATION__{platform.upper()}__HOST": url,
                "P13N__ACTIVATION__KLAVIYO__POLL_SECONDS": "0.05",
                "P13N__ACTIVATION__MAILCHIMP__SERVER": "us1",
            }
            settings = load_settings("local", environ=env)
            target = (
                {"list_id": "main", "segment": "everyone"}
                if platform == "mailchimp"
                else {"list_id": "Everyone"}
            )
            audiences = {"everyone": AudienceSettings(destinations={platform: target})}
            settings = settings.model_copy(
                update={"activation": settings.activation.model_copy(update={"audiences": audiences})}
            )
            os.environ[
                settings.activation.klaviyo.credential_env
                if platform == "klaviyo"
                else settings.activation.mailchimp.credential_env
            ] = key
            frame = candidates(duckdb_connection(), settings, "everyone", AS_OF)
            eligible = frame[frame["exclude_reason"].isna()].to_dict("records")

            client = Klaviyo(settings, key) if platform == "klaviyo" else Mailchimp(settings, key)
            t = time.perf_counter()
            if platform == "klaviyo":
                for batch in client.batches(eligible):
                    body = {
                        "data": {
                            "type": "profile-bulk-import-job",
                            "attributes": {"profiles": {"data": [client._profile(r) for r in batch]}},
                        }
                    }
                    job = client.api.Profiles.bulk_import_profiles(body)["data"]
                    client._wait(job["id"])
            else:
                members = [Mailchimp._member(r) for r in eligible]
                t = time.perf_counter()
                for i in range(0, len(members), 500):
                    client.client.lists.batch_list_members(
                        "bare", {"members": members[i : i + 500], "update_existing": True}
                    )
            bare = len(eligible) / (time.perf_counter() - t)

            summary = sync(settings, "everyone", platform, AS_OF, progress=lambda _: None)
            t = time.perf_counter()
            again = sync(settings, "everyone", platform, AS_OF, progress=lambda _: None)
            resync = time.perf_counter() - t
            assert again.added == again.updated == 0
            out |= {
                f"{platform}_profiles": summary.added,
                f"{platform}_rejected": summary.rejected,
                f"{platform}_sync_s": round(summary.seconds, 2),
                f"{platform}_profiles_per_s": round(summary.profiles_per_second),
                f"{platform}_bare_per_s": round(bare),
                f"{platform}_export_ratio": round(summary.profiles_per_second / bare, 3),
                f"{platform}_resync_s": round(resync, 2),
            }
    return out
