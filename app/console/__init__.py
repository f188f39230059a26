"""The operator's console (contract §7): ``/console``, served by the API, plain HTML and CSS.

Registered only when ``OPS_TOKEN`` is set (without it every ``/console`` path answers 404,
as any path the API does not have). What makes it safe, all here:

- a session cookie (``topup_console``, path ``/console``) that is HttpOnly, SameSite=Strict,
  Secure when the request came over https (directly, or through ``TRUSTED_PROXY_COUNT``
  proxies of ours that say so), signed with a key derived from ``OPS_TOKEN``; it carries only
  the id of a server-side session (``ledger.operators``) that signing out ends;
- Flask-WTF's CSRF check on every POST of this blueprint, and of this blueprint only: the
  JSON API and Daraja's callback carry no cookie and are left alone;
- ``Cache-Control: no-store``, ``X-Frame-Options: DENY`` and a Content-Security-Policy with
  ``frame-ancestors 'none'`` (and nothing fetched from elsewhere) on every answer;
- pages rendered by Jinja with autoescaping; phones masked in lists; no secret shown.

The pages are in :mod:`app.console.views` (reading) and :mod:`app.console.actions` (changing,
each with a confirmation step and a reason); signing in and out in :mod:`app.console.auth`.
"""
from __future__ import annotations

import hashlib
import hmac

from flask import Blueprint, Flask, current_app, render_template, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from app.ratelimit import SignInsLimited

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static")
csrf = CSRFProtect()

COOKIE = "topup_console"
CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self'; "
                           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def signing_key(ops_token: str) -> str:
    """The key that signs the console's cookies and CSRF tokens: derived from ``OPS_TOKEN``, so
    that every API process has it without another setting, and a new token signs everyone out."""
    return hmac.new(ops_token.encode(), b"topup-gateway console session",
                    hashlib.sha256).hexdigest()


def behind_https() -> bool:
    """The request came over https: to us, or to a proxy of ours that says so."""
    if request.is_secure:
        return True
    proxies = current_app.config["SETTINGS"].trusted_proxy_count
    forwarded = request.headers.get("X-Forwarded-Proto", "")
    return proxies > 0 and forwarded.split(",")[-1].strip().lower() == "https"


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, Secure exactly when the request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return behind_https()


def init_app(app: Flask) -> None:
    """Serve the console on this app (call only when ``OPS_TOKEN`` is set)."""
    settings = app.config["SETTINGS"]
    app.secret_key = signing_key(settings.ops_token)
    app.session_interface = ConsoleSessionInterface()
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE, SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
        SESSION_REFRESH_EACH_REQUEST=False,
        PERMANENT_SESSION_LIFETIME=settings.console_session_s,
        # checked by this blueprint only (below), not by every view of the app
        WTF_CSRF_CHECK_DEFAULT=False,
        # a token lives as long as the session it belongs to
        WTF_CSRF_TIME_LIMIT=None)
    csrf.init_app(app)
    app.after_request(_never_cached_nor_framed)
    from app.console import actions, auth, views  # noqa: F401  (their routes join bp)
    app.register_blueprint(bp)


@bp.before_request
def _signed_in_and_same_origin():
    """A page needs a live session (else 303 to the sign-in form); a POST needs its CSRF token
    (else 400). Both before the view runs, so a refused request changes nothing."""
    from app.console import actions, auth
    redirect = auth.require_session()
    if redirect is not None:
        return redirect
    if request.endpoint in actions.LARGE_UPLOADS:   # before the CSRF check reads the form
        request.max_content_length = actions.LARGE_UPLOADS[request.endpoint]
    if request.method == "POST":
        csrf.protect()
    return None


def _never_cached_nor_framed(response):
    """Every answer under /console, the sign-in form, errors and unknown paths included."""
    if request.path != "/console" and not request.path.startswith("/console/"):
        return response
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin: Flask-WTF checks, over https, that a form came from this site
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@bp.errorhandler(CSRFError)
def _csrf_refused(exc: CSRFError):
    return render_template("console/error.html", status=400, title="Form refused",
                           message="This form was not sent by this console, or it is older "
                                   "than your sign-in. Nothing was changed: go back, reload "
                                   "the page and send it again."), 400


@bp.errorhandler(SignInsLimited)
def _too_many_sign_ins(exc: SignInsLimited):
    from app.console import auth
    return auth.refused_sign_in("Too many failed sign-ins from this address: wait a minute "
                                "and try again.", 429, headers={"Retry-After": "60"})


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    status = exc.code or 500
    titles = {404: "Not found", 405: "Not allowed", 413: "Too large"}
    return render_template("console/error.html", status=status,
                           title=titles.get(status, "Refused"),
                           message=exc.description or ""), status
