"""The console's forms (Flask-WTF): each carries its CSRF token, and each action asks for a
reason before anything changes."""
from __future__ import annotations

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import HiddenField, PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

MAX_REASON = 500


class SignInForm(FlaskForm):
    token = PasswordField("Ops token", validators=[DataRequired(), Length(max=500)])


class SignOutForm(FlaskForm):
    """Nothing but the CSRF token."""


class Confirmation(FlaskForm):
    """Step two of every action: the reason, and ``confirmed`` set by the confirmation page's
    button. Without ``confirmed`` the action only shows what it would do."""
    reason = TextAreaField("Reason", validators=[Optional(), Length(max=MAX_REASON)])
    confirmed = HiddenField()

    def is_confirmed(self) -> bool:
        return self.confirmed.data == "yes" and bool((self.reason.data or "").strip())


class AssignForm(Confirmation):
    account = StringField("Account id", validators=[DataRequired(), Length(max=64)])


class DeadLettersForm(Confirmation):
    action = HiddenField(validators=[DataRequired()])      # requeue | purge
    queue = HiddenField(validators=[DataRequired(), Length(max=100)])
    letter = HiddenField(validators=[Optional(), Length(max=100)])   # one message, or all


class ResendForm(Confirmation):
    pass


class StatementForm(FlaskForm):
    statement = FileField("Statement (CSV from the M-Pesa organisation portal)",
                          validators=[FileRequired()])


class ApplyForm(Confirmation):
    pass
