"""Reading organisation-portal statements: tolerant of what varies, strict about what matters."""
import datetime as dt

import pytest

from ledger.statement import CHARGE, NOT_COMPLETED, OTHER, PAYMENT, MalformedStatement, parse

HEADER = ("Receipt No.,Completion Time,Initiation Time,Details,Transaction Status,Paid In,"
          "Withdrawn,Balance,Balance Confirmed,Reason Type,Other Party Info,"
          "Linked Transaction ID,A/C No.")


def row(receipt="QAB1CD2EF3", completed="03-02-2026 10:15:00", paid_in="1,000.00",
        withdrawn="", party="254712345678 - JANE DOE", linked="", status="Completed",
        account="INV42"):
    def q(value):
        return f'"{value}"' if "," in value else value
    return ",".join([receipt, completed, completed, "Pay Bill Online", status, q(paid_in),
                     q(withdrawn), '"5,000.00"', "true", "Pay Bill Online", party, linked,
                     account])


def statement(*rows, header=HEADER, bom=True, newline="\r\n"):
    text = newline.join([header, *rows]) + newline
    return (("\ufeff" if bom else "") + text).encode("utf-8")


def test_the_portals_export_is_read_with_its_bom_crlf_and_thousands_separators():
    parsed = parse(statement(row()), name="feb.csv")

    [payment] = parsed.rows
    assert payment.kind == PAYMENT
    assert (payment.line, payment.receipt, payment.paid_in_cents) == (2, "QAB1CD2EF3", 100_000)
    assert payment.completed_at == dt.datetime(2026, 2, 3, 7, 15)   # Nairobi time, held as UTC
    assert (payment.phone, payment.party_name) == ("254712345678", "JANE DOE")
    assert payment.account_no == "INV42"
    assert parsed.name == "feb.csv" and len(parsed.sha256) == 64


def test_columns_may_come_in_any_order_and_header_case_or_trailing_dots_do_not_matter():
    header = "other party info,PAID IN,Receipt No,completion time,Transaction Status"
    data = '254712345678 - JANE,"2,500.50",QAB1CD2EF3,03-02-2026 10:15:00,Completed'

    [payment] = parse(statement(data, header=header)).rows

    assert (payment.receipt, payment.paid_in_cents, payment.phone) == (
        "QAB1CD2EF3", 250_050, "254712345678")


def test_preamble_blank_lines_and_trailing_summary_rows_are_skipped():
    text = "\n".join([
        "Account Holder:,ACME LTD", "Time Period:,01-02-2026 - 28-02-2026", "",
        HEADER, row(receipt="QAB1CD2EF3"), "", ",,,,,,,,,,,,", row(receipt="QAB1CD2EF4"), "",
        'Total,,,,,"2,000.00",,,,,,,', "Closing Balance,,,,,,,\"5,000.00\",,,,,",
        ",,,,,,,,,,,,"]) + "\n"

    parsed = parse(text.encode())

    assert [(r.line, r.receipt) for r in parsed.rows] == [(5, "QAB1CD2EF3"), (8, "QAB1CD2EF4")]
    assert parsed.header_line == 4


@pytest.mark.parametrize("text, expected_eat", [
    ("03-02-2026 10:15:00", (2026, 2, 3, 10, 15, 0)),
    ("03-02-2026 10:15", (2026, 2, 3, 10, 15, 0)),
    ("03/02/2026 10:15:07", (2026, 2, 3, 10, 15, 7)),
    ("2026-02-03 10:15:07", (2026, 2, 3, 10, 15, 7)),
    ("2026-02-03T10:15:07", (2026, 2, 3, 10, 15, 7)),
    ("2026-02-03T07:15:07Z", (2026, 2, 3, 10, 15, 7)),
    ("03-Feb-2026 10:15:07", (2026, 2, 3, 10, 15, 7)),
    ("03-02-2026 10:15:07 PM", (2026, 2, 3, 22, 15, 7)),
    ("20260203101507", (2026, 2, 3, 10, 15, 7)),
    ("03-02-2026 10:15:07.123", (2026, 2, 3, 10, 15, 7)),
])
def test_completion_time_is_read_day_first_in_nairobi_time_in_many_formats(text, expected_eat):
    [payment] = parse(statement(row(completed=text))).rows
    eat = dt.datetime(*expected_eat)
    assert payment.completed_at == eat - dt.timedelta(hours=3)


@pytest.mark.parametrize("text, cents", [
    ("1,000.00", 100_000), ("1000", 100_000), ("1000.5", 100_050), ("KES 1,234.56", 123_456),
    ("Ksh1,000", 100_000), ("250,000.00", 25_000_000), ("0.50", 50), (" 12.00 ", 1_200),
])
def test_amounts_are_read_with_separators_and_currency_marks(text, cents):
    [payment] = parse(statement(row(paid_in=text))).rows
    assert payment.paid_in_cents == cents


def test_withdrawals_written_negative_or_in_brackets_are_money_out():
    parsed = parse(statement(row(receipt="QAB1CD2EF3", paid_in="", withdrawn="-5.00"),
                             row(receipt="QAB1CD2EF4", paid_in="-", withdrawn="(1,200.00)")))
    assert [(r.withdrawn_cents, r.kind) for r in parsed.rows] == [(500, OTHER), (120_000, OTHER)]


def test_a_row_with_a_linked_transaction_id_is_a_charge_never_a_payment():
    parsed = parse(statement(
        row(receipt="QAB1CD2EF3"),
        row(receipt="QAB1CD2EF3", paid_in="", withdrawn="-5.50", linked="QAB1CD2EF3"),
        row(receipt="QZZ1CD2EF9", paid_in="100.00", linked="QAB1CD2EF3")))

    assert [r.kind for r in parsed.rows] == [PAYMENT, CHARGE, CHARGE]
    assert [r.receipt for r in parsed.payments] == ["QAB1CD2EF3"]
    assert parsed.charges[0].linked_to == "QAB1CD2EF3"


def test_a_row_not_completed_is_not_a_payment():
    [failed] = parse(statement(row(status="Failed"))).rows
    assert failed.kind == NOT_COMPLETED


@pytest.mark.parametrize("party, phone, name", [
    ("254712345678 - JANE DOE", "254712345678", "JANE DOE"),
    ("0712345678 - JANE DOE", "254712345678", "JANE DOE"),
    ("+254112345678 - JANE - DOE", "254112345678", "JANE - DOE"),
    ("2547******78 - JANE DOE", "2547******78", "JANE DOE"),
    ("254712345678", "254712345678", None),
    ("600000 - ACME PAYBILL", None, "ACME PAYBILL"),
])
def test_other_party_info_gives_the_phone_and_name(party, phone, name):
    [payment] = parse(statement(row(party=party))).rows
    assert (payment.phone, payment.party_name) == (phone, name)


def test_semicolon_separated_and_utf16_exports_are_read_too():
    text = HEADER.replace(",", ";") + "\n" + row(paid_in="1000").replace(",", ";") + "\n"
    assert parse(text.encode()).rows[0].paid_in_cents == 100_000
    assert parse((HEADER + "\n" + row() + "\n").encode("utf-16")).rows[0].paid_in_cents == 100_000


# --- malformed statements: the line at fault is named -------------------------------------------

def error_of(data: bytes) -> MalformedStatement:
    with pytest.raises(MalformedStatement) as caught:
        parse(data)
    return caught.value


def test_a_file_with_other_columns_is_refused_at_its_first_line():
    error = error_of(b"Date,Amount,Phone\n03-02-2026,100,0712345678\n")
    assert error.line == 1
    assert "not an organisation-portal statement" in str(error)


def test_a_header_missing_required_columns_names_them_and_its_line():
    error = error_of(b"Account Holder:,ACME\nReceipt No.,Completion Time,Withdrawn,Details\n"
                     b"QAB1CD2EF3,03-02-2026 10:15:00,,x\n")
    assert error.line == 2
    assert "Paid In" in str(error) and "Other Party Info" in str(error)
    assert str(error).startswith("line 2: ")


def test_a_header_naming_a_column_twice_is_refused():
    error = error_of(statement(row(), header=HEADER.replace("Withdrawn", "Paid In")))
    assert error.line == 1 and "twice" in str(error)


def test_a_truncated_last_row_is_refused_with_its_line():
    data = statement(row(receipt="QAB1CD2EF3"), row(receipt="QAB1CD2EF4"))
    cut = data[:data.rindex(b"Pay Bill Online,Completed")]
    error = error_of(cut)
    assert error.line == 3 and "truncated" in str(error)


def test_a_file_cut_inside_a_quoted_amount_is_refused_with_its_line():
    data = statement(row(receipt="QAB1CD2EF3"), row(receipt="QAB1CD2EF4", paid_in="2,000.00"))
    cut = data[:data.rindex(b'"2,0') + 4]
    error = error_of(cut)
    assert error.line == 3


@pytest.mark.parametrize("paid_in", ["abc", "1,00", "12.345", "1.000,00", "NaN", "1e3"])
def test_a_non_numeric_amount_is_refused_naming_the_line_and_column(paid_in):
    error = error_of(statement(row(receipt="QAB1CD2EF3"),
                               row(receipt="QAB1CD2EF4", paid_in=paid_in)))
    assert error.line == 3
    assert "Paid In" in str(error)


def test_a_time_or_receipt_that_is_not_one_is_refused_naming_the_line():
    assert error_of(statement(row(completed="yesterday"))).line == 2
    assert "Completion Time" in str(error_of(statement(row(completed="31-31-2026 10:00:00"))))
    assert "Receipt No." in str(error_of(statement(row(receipt="QAB 1CD"))))


def test_an_empty_file_is_refused():
    assert error_of(b"").line == 1
    assert error_of(b"\xef\xbb\xbf\r\n").line == 1
