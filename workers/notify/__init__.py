"""Job webhooks: a finished job's receiver is told, off the worker loop, by signed, deadline-bounded requests.

    sender.py    the payload and this process's sender threads: send, send_when_finished, drain
    delivery.py  one signed delivery with bounded retries, each attempt pinned to a checked address (httpx)
    urls.py      which URLs a webhook may go to (SSRF checks): at submit and again before every attempt

Importing the package loads sender.py only, which imports nothing heavy: a worker that finishes a job and the API
that cancels a queued one queue its webhook without loading the HTTP client (the sender threads do).
"""

from __future__ import annotations

from workers.notify.sender import budget, deliver_webhook, drain, send, send_when_finished, webhook_payload

__all__ = ["budget", "deliver_webhook", "drain", "send", "send_when_finished", "webhook_payload"]
