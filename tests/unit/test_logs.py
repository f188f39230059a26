"""Log lines are one JSON object each, name the top-up they concern, and never carry a full
phone number or a secret."""
from __future__ import annotations

import io
import json
import logging

import pytest

from telemetry import logs
from telemetry.redact import Redactor, mask_phones

SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def lines():
    """A logger writing through the production formatter into a buffer; the lines it wrote."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.GatewayJsonFormatter("api", redact=Redactor([SECRET])))
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.propagate = True


def test_a_log_line_is_one_json_object_with_time_level_logger_message_and_service(lines):
    logger, written = lines
    logger.info("push accepted", extra={"amount": 10})
    [line] = written()
    assert line["level"] == "INFO" and line["logger"] == "tests.logs"
    assert line["message"] == "push accepted" and line["service"] == "api"
    assert line["amount"] == 10
    assert line["time"].endswith("Z") and "T" in line["time"]


@pytest.mark.parametrize("phone", ["254712345678", "+254712345678", "0712345678",
                                   "0712 345 678", "+254 712 345 678", "254-712-345678"])
def test_a_phone_number_in_any_form_is_masked(phone):
    assert mask_phones(f"paid from {phone}.") == "paid from 2547****5678."


def test_other_numbers_are_left_alone():
    text = "receipt QWE1234567, ws_CO_28112026100000123456, 20261128100000, amount 250000"
    assert mask_phones(text) == text


def test_phones_are_masked_in_the_message_the_extras_numbers_and_tracebacks(lines):
    logger, written = lines
    try:
        raise ValueError("no wallet for 0712345678")
    except ValueError:
        logger.exception("callback from %s", "254712345678",
                         extra={"phone": "+254 712 345 678", "PhoneNumber": 254712345678,
                                "nested": {"msisdn": ["0712345678"]}})
    [line] = written()
    text = json.dumps(line)
    assert "2547****5678" in line["message"]
    assert line["phone"] == "2547****5678" and line["PhoneNumber"] == "2547****5678"
    assert line["nested"] == {"msisdn": ["2547****5678"]}
    assert "ValueError: no wallet for 2547****5678" in line["exc_info"]
    for digits in ("712345678", "712 345 678"):
        assert digits not in text


def test_secrets_and_credentials_never_appear_in_a_line(lines):
    logger, written = lines
    logger.warning("posting to http://api/daraja/callback/%s", SECRET,
                   extra={"authorization": "Bearer abc.def.ghi", "api_key": "sk_" + "a" * 32,
                          "headers": "Authorization: Basic c2ltOnNlY3JldHNlY3JldA==",
                          "webhook": "whsec_" + "b" * 40, "passkey": "bfb279f9aa9b"})
    [line] = written()
    text = json.dumps(line)
    for leaked in (SECRET, "abc.def.ghi", "a" * 32, "c2ltOnNlY3JldHNlY3JldA==", "b" * 40,
                   "bfb279f9aa9b"):
        assert leaked not in text
    assert line["message"] == "posting to http://api/daraja/callback/[redacted]"
    assert line["authorization"] == "[redacted]"


def test_lines_logged_while_a_context_is_bound_name_the_topup(lines):
    logger, written = lines
    with logs.bound(topup_id="tu_1", checkout_request_id="ws_CO_1"):
        logger.info("inside")
        with logs.bound(callback=7):
            logger.info("deeper")
    logger.info("outside")
    inside, deeper, outside = written()
    assert (inside["topup_id"], inside["checkout_request_id"]) == ("tu_1", "ws_CO_1")
    assert deeper["callback"] == 7 and deeper["topup_id"] == "tu_1"
    assert "topup_id" not in outside


def test_an_explicit_field_wins_over_the_bound_context(lines):
    logger, written = lines
    with logs.bound(topup_id="tu_outer"):
        logger.info("about another", extra={"topup_id": "tu_other"})
    [line] = written()
    assert line["topup_id"] == "tu_other"


@pytest.fixture
def root_handlers():
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    yield root
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_configure_reformats_plain_handlers_and_leaves_others_alone(root_handlers):
    class Capture(logging.StreamHandler):  # like pytest's capture handlers: a subclass
        pass
    plain, capture = logging.StreamHandler(io.StringIO()), Capture(io.StringIO())
    root_handlers.handlers[:] = [plain, capture]
    logs.configure("workers", add_handler=False)
    assert isinstance(plain.formatter, logs.GatewayJsonFormatter)
    assert not isinstance(capture.formatter, logs.GatewayJsonFormatter)


def test_a_later_reformat_keeps_the_service_its_entrypoint_chose(root_handlers):
    stream = io.StringIO()
    root_handlers.handlers[:] = []
    logs.configure("api", stream=stream)           # the entrypoint
    logs.configure("workers", add_handler=False)   # a workers' start-up in the same process
    logging.getLogger("tests.root_logs.service").warning("hello")
    assert json.loads(stream.getvalue())["service"] == "api"


def test_configure_adds_one_json_handler_when_the_process_has_none(root_handlers):
    stream = io.StringIO()
    root_handlers.handlers[:] = []
    logs.configure("topupctl", secrets=[SECRET], stream=stream)
    logs.configure("topupctl", secrets=[SECRET], stream=stream)
    assert len(root_handlers.handlers) == 1
    logging.getLogger("tests.root_logs.added").info("token %s", SECRET)
    [line] = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["message"] == "token [redacted]" and line["service"] == "topupctl"


def test_secrets_are_read_from_the_settings_by_name():
    import settings
    loaded = settings.load({"DARAJA_CALLBACK_TOKEN": SECRET, "OPS_TOKEN": "ops-token-123"})
    found = logs.secrets_of(loaded)
    assert SECRET in found and "ops-token-123" in found
    assert loaded.daraja_passkey in found and loaded.daraja_consumer_secret in found


def test_fields_learnt_during_the_work_join_the_bound_context_until_it_ends(lines):
    logger, written = lines
    logs.amend(topup_id="tu_nowhere")  # nothing bound: nothing to add to
    token = logs.bind(actor="push_topup")
    logger.info("before")
    logs.amend(checkout_request_id="ws_CO_9")
    logger.info("after")
    logs.unbind(token)
    logger.info("outside")
    before, after, outside = written()
    assert "checkout_request_id" not in before
    assert after["checkout_request_id"] == "ws_CO_9" and after["actor"] == "push_topup"
    assert "checkout_request_id" not in outside and "topup_id" not in outside
    assert logs.context() == {}


def test_phones_in_nested_keys_floats_and_unusual_objects_are_masked_too(lines):
    logger, written = lines

    class Unusual:
        def __str__(self):
            return f"customer 0712345678, key {SECRET}"

    logger.info("odd shapes", extra={"by_phone": {"254712345678": 1}, "as_float": 254712345678.0,
                                     "object": Unusual(), "error": ValueError("0712 345 678")})
    [line] = written()
    text = json.dumps(line)
    assert line["by_phone"] == {"2547****5678": 1}
    assert line["as_float"] == "2547****5678"
    assert "2547****5678" in line["object"] and "[redacted]" in line["object"]
    for leaked in ("712345678", "712 345 678", SECRET):
        assert leaked not in text


def test_a_phone_or_a_secret_in_any_one_of_many_fields_is_masked(lines):
    logger, written = lines
    clean = {f"field_{i}": f"ws_CO_29112026{i:012d}" for i in range(12)}
    for hidden in ("0712 345 678", f"token={SECRET}", "Bearer abcdefghijkl", "sk_" + "c" * 20):
        logger.info("many fields", extra={**clean, "note": f"see {hidden} here"})
    for line in written():
        assert {k: line[k] for k in clean} == clean   # ids with long digit runs are kept
        assert "[redacted]" in line["note"] or "2547****5678" in line["note"]
        for leaked in ("712 345 678", SECRET, "abcdefghijkl", "c" * 20):
            assert leaked not in json.dumps(line)


def test_the_quick_look_at_a_line_never_misses_what_redaction_would_change():
    # A line is redacted field by field only when one scan of all its strings finds
    # something; that scan must find everything the full patterns would change: a line's
    # fields come out as each string redacted alone would.
    import random

    redactor = Redactor([SECRET])
    alphabet = list("0123456789 -+_[]x\n\0") + list("bBeEaArRsSiIcCkKwWhH") + ["ſ", "ı", "K"]
    samples = ["0712345678", "254 712 345 678", "+254-712-345678", "sk_" + "a" * 16,
               "whsec_" + "Z" * 16, "Bearer abcdefgh", "basıc abcdefgh", "BaſIC xxxxxxxx", SECRET]
    rng = random.Random(7)
    found = 0
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        if rng.random() < 0.4:
            sample = rng.choice(samples)
            text += "".join(c if rng.random() > 0.1 else rng.choice(alphabet) for c in sample)
        alone = redactor.text(text)
        found += alone != text
        assert redactor.fields({"event": "topup", "note": text}) == {
            "event": "topup", "note": alone}, repr(text)
    assert found > 1000   # the samples did exercise every kind


def test_a_dramatiq_child_logs_json_lines_into_the_pipe_its_parent_relays(root_handlers):
    import multiprocessing

    import dramatiq.cli  # noqa: F401  (what a `dramatiq` process has imported)
    from dramatiq.compat import StreamablePipe
    read_end, write_end = multiprocessing.Pipe(duplex=False)
    try:
        pipe = StreamablePipe(write_end)
        handler = logging.StreamHandler(pipe)   # what Dramatiq's basicConfig installs
        root_handlers.handlers[:] = [handler]
        root_handlers.setLevel(logging.INFO)
        logs.configure("workers", add_handler=False)
        logging.getLogger("tests.logs.worker").info("short", extra={"phone": "0712345678"})
        try:
            raise ValueError("x" * 8000)   # longer than PIPE_BUF: still one whole line
        except ValueError:
            logging.getLogger("tests.logs.worker").exception("long")
        relayed = ""
        while read_end.poll(1) and relayed.count("\n") < 2:
            relayed += read_end.recv_bytes().decode()
    finally:
        read_end.close()
        write_end.close()
    short, with_traceback = [json.loads(line) for line in relayed.splitlines()]
    assert short["message"] == "short" and short["service"] == "workers"
    assert short["phone"] == "2547****5678"
    assert with_traceback["message"] == "long"
    assert with_traceback["exc_info"].endswith("ValueError: " + "x" * 8000)
