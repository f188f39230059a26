"""The simulator's phone (``GET /phone``): the prompts waiting on each phone, and what a
customer can do about each, in a browser.

Phones that no magic number claims wait for a person here when the simulator runs with
``unclaimed_phones`` ``"wait"`` (``topupctl simulator --phones wait``; ``make run`` does): pay
with any 4-digit PIN, cancel (1032), enter a wrong PIN (2001), let it time out (1037) or have
too little money (1). The page refreshes itself every few seconds (a meta refresh: no
JavaScript); a prompt's own page, where the PIN is typed, refreshes only when it times out.

Plain HTML and CSS rendered by Jinja (autoescaped), served by the simulator's own HTTP server.
A form is taken only from a page of this simulator: a POST whose ``Origin`` names another
site is refused (403), so another page open in the same browser cannot pay for the customer.
"""
from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape

from .engine import Daraja, Reply

HTML = "text/html; charset=utf-8"
REFRESH_S = 2
HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                      "form-action 'self'; frame-ancestors 'none'"}
ANSWERS = (("cancel", "Cancel"), ("wrong_pin", "Wrong PIN"), ("timeout", "Let it time out"),
           ("no_money", "Not enough money"))

_templates = Environment(loader=PackageLoader("simulator", "templates"),
                         autoescape=select_autoescape(["html"]))


def _page(template: str, status: int = 200, **context) -> Reply:
    body = _templates.get_template(template).render(answers=ANSWERS, **context)
    return Reply(status, body.encode(), HTML, headers=dict(HEADERS))


def _see_other(location: str) -> Reply:
    return Reply(303, b"", None, headers={**HEADERS, "Location": location})


def route(daraja: Daraja, method: str, path: str, body: bytes, headers) -> Reply:
    """``GET /phone``, ``GET /phone/prompts/<id>``, ``POST /phone/prompts/<id>``."""
    if path in ("/phone", "/phone/") and method == "GET":
        return _page("phone.html", prompts=daraja.prompts(),
                     answered=daraja.answered_prompts(), refresh=REFRESH_S,
                     config=daraja.config)
    prefix = "/phone/prompts/"
    if not path.startswith(prefix):
        return _page("phone_error.html", 404, message="No such page.")
    checkout = path[len(prefix):]
    if method == "GET":
        prompt = next((p for p in daraja.prompts() if p["checkout_request_id"] == checkout),
                      None)
        if prompt is None:
            return _see_other("/phone")
        return _page("prompt.html", prompt=prompt, error=None)
    if method != "POST":
        return _page("phone_error.html", 405, message="Use the page's buttons.")
    if not _same_origin(headers):
        return _page("phone_error.html", 403, message="This form came from another site.")
    form = parse_qs(body.decode("utf-8", "replace"))
    action = form.get("action", [""])[0]
    refused = daraja.answer_prompt(checkout, action, form.get("pin", [None])[0])
    if refused is None:
        return _see_other("/phone#answered")
    prompt = next((p for p in daraja.prompts() if p["checkout_request_id"] == checkout), None)
    if prompt is None:
        return _page("phone_error.html", 409, message=refused)
    return _page("prompt.html", 422, prompt=prompt, error=refused)


def _same_origin(headers) -> bool:
    origin = headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == headers.get("Host", "")


def prompt_path(checkout_request_id: str) -> str:
    return "/phone/prompts/" + quote(checkout_request_id, safe="")


_templates.globals["prompt_path"] = prompt_path
