"""Reading an M-Pesa organisation-portal statement (the portal's CSV export).

The portal's columns, in its order: ``Receipt No., Completion Time, Initiation Time, Details,
Transaction Status, Paid In, Withdrawn, Balance, Balance Confirmed, Reason Type, Other Party
Info, Linked Transaction ID, A/C No.`` Exports vary, so the reader is tolerant of what does
not change the meaning:

- columns in any order, header names in any case, with or without the trailing dot, with
  a few known aliases; columns it does not use may be missing;
- a UTF-8 (or UTF-16) byte-order mark, Windows line ends, ``;`` or tab as the separator;
- preamble rows above the header (account name, period …), blank rows anywhere, and summary
  rows (``Total``, ``Closing Balance`` …) or note rows with neither receipt nor time;
- amounts as ``1,000.00``, ``1000``, ``KES 1,000.00``, ``-5.00`` or ``(5.00)``, an empty cell
  or ``-`` for nothing;
- Completion Time as ``DD-MM-YYYY HH:MM:SS`` (the portal's), ``DD/MM/YYYY``, ``YYYY-MM-DD``,
  ISO 8601, ``03-Feb-2026``, with or without seconds, 12-hour clocks, ``YYYYMMDDHHmmss``;
  always day first, in Nairobi time unless it carries an offset;
- ``Other Party Info`` as ``2547XXXXXXXX - NAME`` (also ``07…``, ``+254…``, or masked
  ``2547****5678``).

It is strict about what would change the meaning: a missing required column, a row with
fewer fields than the header (a truncated file), a receipt that is not one, a time that is
not one, an amount that is not a number. Each raises :class:`MalformedStatement` naming the
line; nothing is read from a statement that does not parse whole.

A row with a ``Linked Transaction ID`` is a charge linked to a primary row, never a payment.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

EAT = dt.timezone(dt.timedelta(hours=3), "EAT")

PAYMENT, CHARGE, NOT_COMPLETED, OTHER = "payment", "charge", "not_completed", "other"

# canonical name → the normalised header texts that mean it (lower case, letters and digits)
COLUMNS = {
    "receipt": ("receiptno", "receiptnumber", "receipt", "mpesareceipt", "transactionid"),
    "completion_time": ("completiontime", "completiondate", "completedtime", "completedat",
                        "completiondatetime"),
    "initiation_time": ("initiationtime", "initiationdate"),
    "details": ("details", "description"),
    "status": ("transactionstatus", "status"),
    "paid_in": ("paidin", "paidinkes", "paidinksh", "paidinkshs", "moneyin"),
    "withdrawn": ("withdrawn", "withdrawnkes", "withdrawnksh", "paidout", "moneyout"),
    "balance": ("balance", "balancekes", "balanceksh"),
    "balance_confirmed": ("balanceconfirmed",),
    "reason_type": ("reasontype", "transactiontype"),
    "other_party": ("otherpartyinfo", "otherparty", "otherpartyinformation"),
    "linked": ("linkedtransactionid", "linkedtransaction", "linkedtransactionno"),
    "account_no": ("acno", "accountno", "accountnumber", "billreference", "accno"),
}
REQUIRED = ("receipt", "completion_time", "paid_in", "other_party")
LABELS = {"receipt": "Receipt No.", "completion_time": "Completion Time", "paid_in": "Paid In",
          "other_party": "Other Party Info"}
_ALIASES = {alias: name for name, aliases in COLUMNS.items() for alias in aliases}

HEADER_SEARCH_ROWS = 30
_RECEIPT = re.compile(r"[A-Z0-9]{6,20}")
_SUMMARY = re.compile(r"(?:(?:grand\s+)?(?:sub-?\s*)?totals?|opening\s+balance|closing\s+balance|"
                      r"summary|balance\s+[bc]/f|page\s+\d+|end\s+of\s+(?:statement|report)|"
                      r"report\s+generated|generated\s+(?:on|at|by)|disclaimer)\b",
                      re.IGNORECASE)
_AMOUNT = re.compile(r"\d{1,3}(,\d{3})+(\.\d+)?|\d+(\.\d+)?|\.\d+")
_CURRENCY = re.compile(r"^(kes|kshs?|ksh\.)\.?\s*", re.IGNORECASE)
_FRACTION = re.compile(r"(\d{2}:\d{2}:\d{2})[.,]\d+")
TIME_FORMATS = (
    "%d-%m-%Y %H:%M:%S", "%d-%m-%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M",
    "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M",
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M",
    "%d-%b-%Y %H:%M:%S", "%d-%b-%Y %H:%M", "%d %b %Y %H:%M:%S", "%d %b %Y %H:%M",
    "%d-%m-%Y %I:%M:%S %p", "%d-%m-%Y %I:%M %p", "%d/%m/%Y %I:%M:%S %p", "%d/%m/%Y %I:%M %p",
    "%Y%m%d%H%M%S",
)


class MalformedStatement(ValueError):
    """The statement cannot be read as a whole; ``line`` is the first line at fault."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.reason = message


@dataclass(frozen=True)
class StatementRow:
    line: int
    receipt: str
    completed_at: dt.datetime          # naive UTC, like the ledger
    status: str
    paid_in_cents: int
    withdrawn_cents: int               # positive: money out
    phone: str | None                  # 2547…/2541…, possibly masked with '*'; None if none
    party_name: str | None
    linked_to: str | None              # the primary row's receipt, for a charge
    account_no: str | None
    reason_type: str | None

    @property
    def kind(self) -> str:
        if self.linked_to:
            return CHARGE
        if self.status.lower() not in ("completed", "complete", "success", "successful"):
            return NOT_COMPLETED
        return PAYMENT if self.paid_in_cents > 0 else OTHER


@dataclass(frozen=True)
class Statement:
    name: str
    sha256: str
    header_line: int
    lines: int
    rows: tuple[StatementRow, ...]

    def of_kind(self, kind: str) -> list[StatementRow]:
        return [row for row in self.rows if row.kind == kind]

    @property
    def payments(self) -> list[StatementRow]:
        return self.of_kind(PAYMENT)

    @property
    def charges(self) -> list[StatementRow]:
        return self.of_kind(CHARGE)


def read_file(path: str, name: str | None = None) -> Statement:
    import os
    with open(path, "rb") as handle:
        data = handle.read()
    return parse(data, name=name or os.path.basename(path))


def parse(data: bytes, name: str = "statement.csv") -> Statement:
    """Read a whole statement, or raise :class:`MalformedStatement` naming the line."""
    text = _decode(data)
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    delimiter, header_line, columns, width = _find_header(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows = []
    previous = 0
    try:
        for cells in reader:
            start, previous = previous + 1, reader.line_num
            if start <= header_line:
                continue
            row = _row(start, [cell.strip() for cell in cells], columns, width)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        raise MalformedStatement(previous + 1, f"cannot be read as CSV ({exc}): "
                                 "is the file truncated?") from None
    return Statement(name=name, sha256=hashlib.sha256(data).hexdigest(),
                     header_line=header_line, lines=lines, rows=tuple(rows))


# --- the parts --------------------------------------------------------------------------------

def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise MalformedStatement(1, "is not valid UTF-16 text") from None
    if b"\x00" in data:
        raise MalformedStatement(data[:data.index(b"\x00")].count(b"\n") + 1,
                                 "holds a NUL byte: not a CSV text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # an export saved by a spreadsheet in a Windows code page


def normalise_header(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _find_header(text: str) -> tuple[str, int, dict[str, int], int]:
    """(delimiter, header line, canonical name → index, number of header cells)."""
    head = "\n".join(text.splitlines()[:HEADER_SEARCH_ROWS])
    best = None   # the header-like row recognising the most columns, to report what is missing
    first_line = None
    for delimiter in (",", ";", "\t"):
        reader = csv.reader(io.StringIO(head, newline=""), delimiter=delimiter)
        previous = 0
        try:
            for cells in reader:
                start, previous = previous + 1, reader.line_num
                names = [normalise_header(cell) for cell in cells]
                if not any(names):
                    continue
                first_line = first_line or start
                known = [_ALIASES.get(n) for n in names]
                found = {k for k in known if k}
                if "receipt" not in found and len(found) < 3:
                    continue
                if best is None or len(found) > len(best[1]):
                    best = (start, found)
                missing = [LABELS[c] for c in REQUIRED if c not in found]
                if missing:
                    continue
                columns: dict[str, int] = {}
                for index, canonical in enumerate(known):
                    if canonical is None:
                        continue
                    if canonical in columns:
                        raise MalformedStatement(start, f"column {cells[index].strip()!r} "
                                                 "appears twice in the header")
                    columns[canonical] = index
                width = len(cells)
                while width and not cells[width - 1].strip():
                    width -= 1
                return delimiter, start, columns, width
        except csv.Error:
            continue
    if best is not None:
        line, found = best
        missing = ", ".join(LABELS[c] for c in REQUIRED if c not in found)
        raise MalformedStatement(line, f"the header lacks the column(s) {missing}: "
                                 "not an organisation-portal statement")
    raise MalformedStatement(first_line or 1, "no header row with the portal's columns "
                             "(Receipt No., Completion Time, Paid In, Other Party Info, …): "
                             "not an organisation-portal statement")


def _row(line: int, cells: list[str], columns: dict[str, int], width: int) -> StatementRow | None:
    """One data row: a StatementRow, None for a row to skip, or MalformedStatement."""
    if not any(cells):
        return None
    first = next(cell for cell in cells if cell)
    if _SUMMARY.match(first):
        return None

    def cell(name: str) -> str:
        index = columns.get(name)
        return cells[index] if index is not None and index < len(cells) else ""

    receipt, completion = cell("receipt"), cell("completion_time")
    if not receipt and not completion:
        return None            # a note or summary row: neither a receipt nor a time
    if len(cells) < width:
        raise MalformedStatement(line, f"has {len(cells)} fields where the header has {width}: "
                                 "is the file truncated?")
    if any(cells[width:]):
        raise MalformedStatement(line, f"has {len(cells)} fields where the header has {width}")
    receipt = receipt.upper()
    if not _RECEIPT.fullmatch(receipt):
        raise MalformedStatement(line, f"Receipt No. {receipt!r} is not an M-Pesa receipt")
    completed_at = parse_time(completion)
    if completed_at is None:
        raise MalformedStatement(line, f"Completion Time {completion!r} is not a date and time")
    paid_in = parse_cents(cell("paid_in"), line, "Paid In")
    if paid_in < 0:
        raise MalformedStatement(line, f"Paid In {cell('paid_in')!r} is negative")
    withdrawn = abs(parse_cents(cell("withdrawn"), line, "Withdrawn"))
    phone, party_name = parse_party(cell("other_party"))
    return StatementRow(
        line=line, receipt=receipt, completed_at=completed_at,
        status=cell("status") or "Completed", paid_in_cents=paid_in, withdrawn_cents=withdrawn,
        phone=phone, party_name=party_name, linked_to=cell("linked").upper() or None,
        account_no=cell("account_no") or None, reason_type=cell("reason_type") or None)


def parse_cents(text: str, line: int, column: str) -> int:
    """``1,000.00`` → 100000; an empty cell or ``-`` → 0; anything else not a number raises."""
    raw = text
    text = text.strip().replace("\u00a0", "").replace(" ", "")
    if text in ("", "-", "\u2013", "\u2014"):
        return 0
    negative = False
    if text.startswith("(") and text.endswith(")"):
        negative, text = True, text[1:-1]
    text = _CURRENCY.sub("", text)
    if text and text[0] in "+-":
        negative, text = negative != (text[0] == "-"), text[1:]
    text = _CURRENCY.sub("", text)
    if not _AMOUNT.fullmatch(text):
        raise MalformedStatement(line, f"{column} {raw!r} is not an amount")
    try:
        cents = Decimal(text.replace(",", "")) * 100
    except InvalidOperation:
        raise MalformedStatement(line, f"{column} {raw!r} is not an amount") from None
    if cents != cents.to_integral_value():
        raise MalformedStatement(line, f"{column} {raw!r} has more than two decimals")
    return -int(cents) if negative else int(cents)


def parse_time(text: str) -> dt.datetime | None:
    """A statement time as naive UTC (the statement's times are Nairobi time), or None."""
    text = " ".join(text.split())
    if not text:
        return None
    text = _FRACTION.sub(r"\1", text)
    when = None
    for fmt in TIME_FORMATS:
        try:
            when = dt.datetime.strptime(text, fmt)
            break
        except ValueError:
            continue
    if when is None:
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=EAT)
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)


_PHONE_PART = re.compile(r"\+?[0-9*]{9,13}")


def parse_party(text: str) -> tuple[str | None, str | None]:
    """``2547XXXXXXXX - NAME`` → (``2547XXXXXXXX``, ``NAME``); a party that is not a mobile
    number (a paybill, an empty cell) gives no phone."""
    text = text.strip()
    if not text:
        return None, None
    number, sep, name = text.partition(" - ")
    if not sep:
        match = re.match(r"(\+?[0-9*]{9,13})\s*-?\s*(.*)", text)
        number, name = (match.group(1), match.group(2)) if match else ("", text)
    number = number.replace(" ", "").strip()
    name = name.strip() or None
    if not _PHONE_PART.fullmatch(number):
        return None, name or text
    number = number.lstrip("+")
    if re.fullmatch(r"0[17][0-9*]{8}", number):
        number = "254" + number[1:]
    elif re.fullmatch(r"[17][0-9*]{8}", number):
        number = "254" + number
    if not re.fullmatch(r"254[17][0-9*]{8}", number):
        return None, name
    return number, name


def phone_matches(statement_phone: str | None, phone: str | None) -> bool:
    """Equal numbers, where a masked statement digit (``*``) matches any digit."""
    if not statement_phone or not phone or len(statement_phone) != len(phone):
        return False
    return all(a == "*" or a == b for a, b in zip(statement_phone, phone))
