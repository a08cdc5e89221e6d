"""A tracking server as the store: answering within seconds before a command starts, bounded retries
after, and telling an outage from any other error."""

from __future__ import annotations

import os
import re
import time

from mnist_exp.runtime.errors import StoreError

# MLflow's HTTP client, per request (MLflow 3.17 reads these at each call; urllib3 sleeps
# factor * 2**(n-1) s before retry n >= 2, plus up to `jitter` s): a server that refuses connections
# is retried for 2 + 4 + ... + 64 = 126 s (an outage of a minute or two is ridden through); one that
# never answers fails after at most 8 x 15 s + 126 s (+ 7 s jitter), about 4 min 15 s. MLflow's own
# defaults (7 retries, factor 2, timeout 120 s) would wait about 4 min on a refused port and up to
# 8 x 120 s + 244 s = 20 min on a silent one. Values the user set are kept.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # an int in MLflow 3.17
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
PREFLIGHT_S = 8.0  # check_server gives up within this long (the contract: one line within 15 s)
PREFLIGHT_ATTEMPT_S = 4.0  # one request's connect / read timeout



def set_http_limits() -> None:
    """Bounded retries and timeouts for MLflow's HTTP client, for the rest of this process (and the
    workers it starts); a value the user set is kept. Reads cut off mid-answer are retried too."""
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    retry_cut_off_reads()


def is_read(method: str, url: str) -> bool:
    """True for a request of MLflow's REST API that changes nothing on the server (a GET, or a search sent
    as POST): safe to send again when its answer was cut off, where a write may already have been done."""
    path = url.split("?", 1)[0].rstrip("/")
    return method.upper() in ("GET", "HEAD") or (method.upper() == "POST" and path.endswith("/search"))


def retry_cut_off_reads() -> None:
    """Retry, in this process, a read whose answer the server cut off mid-body (it was stopped while answering).

    MLflow 3.17's client retries a refused connection or a missing answer through urllib3, but the body
    is read after urllib3 has returned (mlflow/mlflow#7732), so without this one server restart at the
    wrong moment ends a sweep that a longer outage would not. MLflow has no hook for it: its session
    factory (``mlflow.utils.request_utils._get_request_session``) is wrapped once, and each session it
    makes gets an adapter that reads a read's body inside the same Retry budget and backoff.
    """
    from mlflow.utils import request_utils

    if getattr(request_utils._get_request_session, "mnist_exp_whole_reads", False):
        return
    make_session = request_utils._get_request_session
    adapter_class = _whole_read_adapter_class()

    def session_with_whole_reads(*args, **kwargs):
        session = make_session(*args, **kwargs)
        adapter = session.get_adapter("http://")
        if not isinstance(adapter, adapter_class):
            from mlflow.environment_variables import MLFLOW_HTTP_POOL_CONNECTIONS, MLFLOW_HTTP_POOL_MAXSIZE

            whole = adapter_class(pool_connections=MLFLOW_HTTP_POOL_CONNECTIONS.get(),
                                  pool_maxsize=MLFLOW_HTTP_POOL_MAXSIZE.get(), max_retries=adapter.max_retries)
            session.mount("https://", whole)
            session.mount("http://", whole)
        return session

    session_with_whole_reads.mnist_exp_whole_reads = True
    request_utils._get_request_session = session_with_whole_reads


def _whole_read_adapter_class():
    import requests
    import urllib3
    from mlflow.utils.request_utils import TCPKeepAliveHTTPAdapter

    class WholeReadAdapter(TCPKeepAliveHTTPAdapter):
        """MLflow's adapter that reads a read's body before returning, retrying a cut-off one."""

        def send(self, request, stream=False, **kwargs):
            retry = self.max_retries
            while True:
                response = super().send(request, stream=stream, **kwargs)
                if stream or not is_read(request.method, request.url) or not isinstance(request.body, (bytes, str, type(None))):
                    return response
                try:
                    response.content  # noqa: B018 (read here, where a cut-off body can be asked for again)
                    return response
                except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError) as e:
                    response.close()
                    try:
                        retry = retry.increment(request.method, request.url, error=urllib3.exceptions.ProtocolError(str(e)))
                    except urllib3.exceptions.MaxRetryError:
                        raise e from e.__context__
                retry.sleep()

    return WholeReadAdapter


def check_server(uri: str, experiment: str = "mnist-exp", deadline_s: float = PREFLIGHT_S) -> None:
    """StoreError within ``deadline_s`` (+ one request) unless the tracking server at ``uri`` answers
    MLflow's REST API. Retries with backoff, so a server that is restarting gets a few seconds."""
    import http.client
    import socket
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    url = (f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?"
           f"{urllib.parse.urlencode({'experiment_name': experiment})}")
    request = urllib.request.Request(url, headers=_auth_headers())
    context = _ssl_context() if uri.startswith("https://") else None
    start, delay, tries, waited = time.monotonic(), 0.5, 0, 0.0
    while True:
        tries += 1
        timeout = max(1.0, min(PREFLIGHT_ATTEMPT_S, deadline_s - (time.monotonic() - start)))
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                response.read()
            return
        except urllib.error.HTTPError as e:
            body = e.read(2000)
            if e.code == 401:
                raise StoreError(unauthenticated(uri)) from None
            if e.code < 500 and (e.code != 404 or b"error_code" in body):
                return  # it answers as MLflow does (403 is left to the command that is refused)
            if e.code < 500:
                raise StoreError(f"tracking server {uri} answered HTTP {e.code} to MLflow's REST API: not an MLflow "
                                 "tracking server? check --tracking-uri / MLFLOW_TRACKING_URI") from None
            why = f"answered HTTP {e.code}"
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLError):  # retrying will not make the certificate trusted
                what = (f"its TLS certificate is not trusted ({reason.verify_message})"
                        if isinstance(reason, ssl.SSLCertVerificationError) else f"TLS failed ({reason})")
                raise StoreError(f"tracking server {uri}: {what}; a private CA: export "
                                 "MLFLOW_TRACKING_SERVER_CERT_PATH=/path/to/ca.pem") from None
            if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
                waited = max(waited, timeout)
                why = f"did not answer within {waited:.0f} s"
            else:
                why = f"cannot be reached ({getattr(reason, 'strerror', None) or reason})"
        elapsed = time.monotonic() - start
        if elapsed + delay + 1.0 > deadline_s:  # no time left for a try worth making
            raise StoreError(f"tracking server {uri} {why} ({tries} tries in {elapsed:.0f} s); start it, or check "
                             "--tracking-uri / MLFLOW_TRACKING_URI") from None
        time.sleep(delay)
        delay = min(delay * 2, 4.0)


def unauthenticated(uri: str) -> str:
    """The line for a server that answered 401: what to set, and whose password it refused."""
    user = credentials()[0]
    if not user:
        return (f"tracking server {uri} requires a user: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "(or write them to ~/.mlflow/credentials); an admin adds users: mnist-exp server-users DIR add NAME")
    return (f"tracking server {uri} refused user {user} (HTTP 401: unknown user or wrong password): check "
            "MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials)")


def permission_denied(uri: str, level: str) -> str:
    """The line for a request the server refused (403): who, and the grant that allows it."""
    user = credentials()[0] or "(anonymous)"
    return (f"tracking server {uri} refused user {user}: permission denied; an admin grants it: "
            f"mnist-exp server-users DIR grant {user} {level}")


def http_status(exc: BaseException) -> int | None:
    """401 or 403 when ``exc`` is MLflow's client reporting that answer of the tracking server, else None."""
    text = str(exc)
    if getattr(exc, "error_code", "") == "PERMISSION_DENIED" or "error code 403" in text:
        return 403
    if getattr(exc, "error_code", "") == "UNAUTHENTICATED" or "error code 401" in text:
        return 401
    return None


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's client would send: basic auth from MLFLOW_TRACKING_USERNAME / _PASSWORD or
    ~/.mlflow/credentials, or a bearer token from the environment."""
    import base64

    user, password = credentials()
    if user and password:
        return {"Authorization": "Basic " + base64.standard_b64encode(f"{user}:{password}".encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def credentials() -> tuple[str | None, str | None]:
    """(username, password) as MLflow 3.17's client reads them (mlflow.utils.credentials.read_mlflow_creds: each from
    the environment, else from ~/.mlflow/credentials), without importing MLflow: the pre-flight check must answer
    within seconds."""
    import configparser

    from_file: dict = {}
    path = os.path.expanduser("~/.mlflow/credentials")
    if os.path.exists(path):
        parser = configparser.ConfigParser()
        parser.read(path)
        from_file = dict(parser["mlflow"]) if "mlflow" in parser else {}
    return (os.environ.get("MLFLOW_TRACKING_USERNAME") or from_file.get("mlflow_tracking_username"),
            os.environ.get("MLFLOW_TRACKING_PASSWORD") or from_file.get("mlflow_tracking_password"))


def _ssl_context():
    """TLS as MLflow's client would verify it (MLFLOW_TRACKING_INSECURE_TLS, *_CERT_PATH)."""
    import ssl

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl._create_unverified_context()
    else:
        context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        context.load_cert_chain(client_cert)
    return context


# Messages of MLflow 3.17's client when its retries are spent (rest_utils.http_request wraps the requests
# error in an MlflowException, without `from`, so the cause may only be in the message).
_UNAVAILABLE_TEXT = re.compile(
    r"Max retries exceeded|failed with timeout exception|Connection refused|Connection reset|Connection aborted"
    r"|Read timed out|RemoteDisconnected|Failed to establish a new connection|too many 5\d\d error responses"
    r"|failed with error code 5\d\d")


def is_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` says the tracking server could not be reached, timed out or answered 5xx after
    MLflow's retries: a sweep should stop (finished trials kept) rather than fail the trial."""
    import requests
    import urllib3

    # Not the builtin ConnectionError / TimeoutError: a BrokenPipeError on a closed stdout is no outage,
    # and MLflow's client never lets a bare socket error out unwrapped.
    network = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError,
               urllib3.exceptions.MaxRetryError, urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError)
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(seen) < 20:
        seen.add(id(e))
        if isinstance(e, network):
            return True
        if type(e).__module__.startswith("mlflow") and _UNAVAILABLE_TEXT.search(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False
