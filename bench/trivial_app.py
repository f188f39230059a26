"""The baseline for the callback endpoint: Flask under the same gunicorn settings, parsing
the same JSON body and answering the same acknowledgement, with nothing stored or enqueued.

``gunicorn "bench.trivial_app:create_app()"``
"""
from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/daraja/callback/<token>")
    def receive(token):
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            return jsonify({"ResultCode": 1, "ResultDesc": "Rejected"}), 400
        return jsonify({"ResultCode": 0, "ResultDesc": "Accepted"})

    return app
