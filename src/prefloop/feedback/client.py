"""A small REST client of the feedback app, and simulated annotators that annotate through it like people.

    client = FeedbackClient("http://127.0.0.1:8000", token)
    simulate(client, project_id, annotator)   # a `prefloop.world.annotators.Annotator`

A judgment is sent with a submission id made before the first try, and resent with the same id after a
network error or a 5xx answer, so a retry never counts twice.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from prefloop.errors import FeedbackError


class SimulatedAnnotator(Protocol):
    def choose(self, prompt: Any, response_a: Any, response_b: Any) -> Any: ...
    def rank(self, prompt: Any, responses: Any) -> list[int]: ...
    def rate(self, prompt: Any, response: Any, scale: tuple[int, int] = (1, 3)) -> int: ...


@dataclass
class FeedbackClient:
    url: str
    token: str = field(repr=False)  # kept out of logs and error messages
    timeout: float = 30.0
    retries: int = 5
    """Resends after a network error or a 5xx answer, with backoff from 0.2 s."""
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self):
        self._http = httpx.Client(base_url=self.url.rstrip("/"), timeout=self.timeout,
                                  headers={"authorization": f"Bearer {self.token}"})

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                r = self._http.request(method, path, **kw)
                if r.status_code < 500 or attempt == self.retries:
                    break
            except httpx.TransportError as e:
                if attempt == self.retries:
                    raise FeedbackError(f"{method} {self.url}{path}: {e or type(e).__name__}") from None
            time.sleep(delay)
            delay = min(2 * delay, 5.0)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text[:200]
            raise FeedbackError(f"{method} {path}: {r.status_code} {detail}")
        return r

    def me(self) -> dict:
        return self._request("GET", "/api/me").json()

    def projects(self) -> list[dict]:
        return self._request("GET", "/api/projects").json()

    def import_items(self, project_id: int, items: list[dict]) -> int:
        """Import items (objects in the format of an import line) as newline-delimited JSON, the form the app
        reads line by line at any size; returns how many items the app made of them."""
        body = "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items).encode()
        r = self._request("POST", f"/api/projects/{project_id}/items", content=body,
                          headers={"content-type": "application/x-ndjson"})
        return r.json()["imported"]

    def next(self, project_id: int) -> dict | None:
        """The next assignment view (prompt, responses in display order, ...) or None when none is left."""
        return self._request("POST", f"/api/projects/{project_id}/next").json()["assignment"]

    def submit(self, assignment_id: int, value: dict, submission_id: str | None = None,
               duration_ms: int | None = None) -> dict:
        body = {"submission_id": submission_id or uuid.uuid4().hex, "value": value}
        if duration_ms is not None:
            body["duration_ms"] = duration_ms
        return self._request("POST", f"/api/assignments/{assignment_id}/judgment", json=body).json()

    def export(self, project_id: int, kind: str | None = None, ties: str = "drop") -> str:
        params = {"ties": ties, **({"kind": kind} if kind else {})}
        return self._request("GET", f"/api/projects/{project_id}/export", params=params).text


def judge(view: dict, annotator: SimulatedAnnotator) -> dict:
    """The judgment payload a simulated annotator gives for an assignment view (in display positions)."""
    prompt, rs, t = view["prompt"], view["responses"], view["task_type"]
    if t == "pairwise":
        c = annotator.choose(prompt, rs[0], rs[1])
        return {"choice": 0 if c.prefer_a else 1, "strength": int(c.strength)}
    if t == "ranking":
        return {"ranking": list(annotator.rank(prompt, rs))}
    if t == "rating":
        return {"rating": int(annotator.rate(prompt, rs[0], tuple(view["scale"])))}
    gold = getattr(annotator, "gold", None)
    if gold is None or not hasattr(gold, "ideal_response"):
        raise FeedbackError("a simulated annotator needs a gold scorer with ideal_response to write demonstrations")
    return {"text": gold.ideal_response(prompt)}


def simulate(client: FeedbackClient, project_id: int, annotator: SimulatedAnnotator,
             max_items: int | None = None) -> int:
    """Annotate the project's items through the API until none is left (or `max_items`); returns how many."""
    n = 0
    while max_items is None or n < max_items:
        view = client.next(project_id)
        if view is None:
            break
        t0 = time.monotonic()
        value = judge(view, annotator)
        client.submit(view["assignment_id"], value, duration_ms=int(1000 * (time.monotonic() - t0)))
        n += 1
    return n
