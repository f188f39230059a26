"""Signing in to the console with ``OPS_TOKEN``, and out again (contract §7).

- ``GET /console/login``: the form. ``POST /console/login`` with ``token`` and the form's CSRF
  token: the right token opens a server-side session and answers 303 to the overview; a wrong
  one answers the form again, 401, with an error, and sets no session. Failed sign-ins are
  rate-limited per address (``app/ratelimit.py``).
- Every other page without a live session answers 303 to ``/console/login``.
- ``POST /console/logout`` ends the session on the server: the old cookie opens nothing.
"""
from __future__ import annotations

import hmac

from flask import current_app, g, redirect, render_template, request, session, url_for

from app.console import bp
from app.console.forms import SignInForm
from app.ratelimit import client_address
from ledger import operators

OPEN_ENDPOINTS = frozenset({"console.login", "console.static"})


def require_session():
    """None when the request may go on (a live session, or an open page); else the redirect."""
    g.console_session = operators.live_session(session.get("sid"))
    if g.console_session is not None or request.endpoint in OPEN_ENDPOINTS:
        return None
    return redirect(url_for("console.login"), 303)


def session_id() -> str | None:
    return g.console_session.id if g.get("console_session") is not None else None


def refused_sign_in(message: str, status: int, headers: dict | None = None):
    return (render_template("console/login.html", form=SignInForm(), error=message), status,
            headers or {})


@bp.route("/login", methods=["GET", "POST"])
def login():
    if g.console_session is not None:
        return redirect(url_for("console.overview"), 303)
    form = SignInForm()
    if request.method == "GET":
        return render_template("console/login.html", form=form)
    given = (form.token.data or "").strip()
    expected = current_app.config["SETTINGS"].ops_token
    if not (form.validate() and hmac.compare_digest(given.encode(), expected.encode())):
        operators.record("sign_in_refused", session=None, outcome="refused",
                         address=client_address())
        return refused_sign_in("That is not the ops token.", 401)
    opened = operators.open_session(current_app.config["SETTINGS"].console_session_s,
                                    remote_addr=client_address(),
                                    user_agent=request.headers.get("User-Agent"))
    session.clear()            # nothing of the signed-out cookie carries over
    session["sid"] = opened.id
    session.permanent = True
    operators.record("sign_in", session=opened.id, outcome="signed_in",
                     address=client_address())
    return redirect(url_for("console.overview"), 303)


@bp.post("/logout")
def logout():
    operators.end_session(g.console_session.id)
    operators.record("sign_out", session=g.console_session.id, outcome="signed_out")
    session.clear()
    return redirect(url_for("console.login"), 303)
