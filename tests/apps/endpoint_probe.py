"""What a worker host sees of the head host's MLflow and PostgreSQL endpoints (tests/test_docker_hosts.py runs it on the
simulated second host, the cluster's CA at /certs/ca.crt). Prints one JSON object: each attempt's outcome.

    python endpoint_probe.py mlflow https://<address>:5000 <user>:<password>
    python endpoint_probe.py postgres <address> <user> <password>
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import urllib.error
import urllib.request

CA = "/certs/ca.crt"


def http_status(url: str, context: ssl.SSLContext | None = None, login: str | None = None) -> int | str:
    headers = {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()} if login else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20, context=context) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except Exception as error:  # the outcome is the answer: which error, for the test to read
        return f"{type(error).__name__}: {error}"[:200]


def mlflow(url: str, login: str) -> dict[str, int | str]:
    ours = ssl.create_default_context(cafile=CA)
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    return {"plain": http_status(url.replace("https:", "http:", 1) + "/health"), "system_cas": http_status(url + "/health"),
            "no_login": http_status(api, ours), "login": http_status(api, ours, login)}


def postgres(host: str, user: str, password: str) -> dict[str, str]:
    import psycopg2

    def connect(**options: str) -> str:
        try:
            with psycopg2.connect(host=host, port=5432, user=user, password=password, dbname="optuna", connect_timeout=10,
                                  **options) as connection:
                return f"ok ssl={connection.info.ssl_in_use}"
        except psycopg2.OperationalError as error:
            return str(error).strip().splitlines()[0][:200]

    return {"plain": connect(sslmode="disable"), "verified": connect(sslmode="verify-full", sslrootcert=CA)}


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    print(json.dumps(mlflow(*args) if kind == "mlflow" else postgres(*args)))
