"""uvicorn's HTTP protocol, refusing a prediction under overload before a request task exists.

Under a burst nearly every request is refused, and each refusal through the ASGI app cost
the event loop an asyncio task, the middleware stack and a response object: in a profile of
the server during a burst, creating the task and running the app for refusals took most of
the loop's time (BENCHMARKS.md). The requests that were admitted then waited behind them,
and were answered only when the burst was over. Here the refusal is decided when the
request's headers have been parsed, and its bytes are written straight to the transport;
the body, if any, is read and thrown away as it arrives, so the connection stays usable.

:class:`serving.shedding.LoadShedding` stays in the app and still holds each admitted
request's place: a request this protocol lets through can find the queue full by the time
its task runs, and the app is also served by other servers (tests, ASGI transports).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.shedding import Shedding


class _Refused:
    """Stands in for uvicorn's request cycle once a request has been refused: the response is
    complete, so the parser's body and message-complete callbacks drop what still arrives."""

    response_complete = True

    class message_event:  # noqa: N801 - the attribute name uvicorn's protocol calls .set() on
        @staticmethod
        def set() -> None:
            return None


REFUSED = _Refused()


class SheddingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with :meth:`Shedding.refusal` asked first."""

    def __init__(self, *args: Any, shedding: Shedding, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shedding = shedding

    def on_headers_complete(self) -> None:
        pipelined = self.cycle is not None and not self.cycle.response_complete
        if pipelined or self.parser.should_upgrade():
            super().on_headers_complete()
            return
        started = time.perf_counter()
        path = httptools.parse_url(self.url).path
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        refusal = self.shedding.refusal(
            self.parser.get_method(), path, self.server_state.default_headers, keep_alive
        )
        if refusal is None:
            super().on_headers_complete()
            return
        self.cycle = REFUSED  # type: ignore[assignment]
        self.transport.write(refusal)
        self.shedding.counted(time.perf_counter() - started)
        if keep_alive:
            self.on_response_complete()
        else:
            self.transport.close()


def shedding_protocol(shedding: Shedding) -> partial[SheddingHttpToolsProtocol]:
    """The protocol factory to give ``uvicorn.run(http=...)``."""
    return partial(SheddingHttpToolsProtocol, shedding=shedding)
