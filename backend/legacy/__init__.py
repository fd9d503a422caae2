"""The original chat.petals.dev APIs (WebSocket ``/api/v2/generate``, HTTP ``/api/v1/generate`` and
``/api/v1/models``), split like :mod:`backend.openai`: ``schemas`` (the wire format), ``errors`` (the error
format), ``forms`` (the HTTP API's form/query/JSON parameters), ``websocket_routes`` and ``http_routes``
(parse and format), ``resumable`` (WebSocket sessions that outlive their socket); the work is the shared
generation service's."""
