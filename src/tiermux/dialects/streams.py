"""Streamed answers translated between the two dialects as they pass, and the usage of an Anthropic
stream read as it passes unchanged.

:class:`MessagesFromChatStream` turns an OpenAI-compatible backend's ``chat.completion.chunk``
events into the Messages events an Anthropic client expects; :class:`ChatFromMessagesStream` does
the reverse; :class:`MessagesUsageTap` only reads the usage of an Anthropic stream relayed as it is.

They run once per chunk a backend sends, on the hot path of every streamed answer, so:

- chunks are cut anywhere (an event split over several, several in one); whole events are
  translated and an unfinished one waits for the next chunk (LF, CRLF and CR line ends alike);
- each event is decoded by msgspec into Structs that name only the fields read here, and the
  translated events are written from byte templates rather than built and encoded as objects;
- the classes come from ``tiermux._speedups``: compiled from ``csrc/sse.pyx`` when it was built,
  else their pure-Python twins in ``tiermux._pure.sse`` (same names, outputs and end states).

``feed(chunk)`` returns what to send now, ``finish()`` what is left when the backend's stream ends.
How a translated stream ended is told by ``complete`` (the whole answer went out, up to
``message_stop`` or ``[DONE]``), ``errored`` (the backend's error event went out, translated; the
stream is over) and ``broken`` (neither, once ``finish`` ran; or the backend sent something that
can't be read, after which nothing more is sent). Nothing is made up for a broken stream: the
proxy ends it with ``error_event``. ``usage`` is what the backend reported, in tiermux's terms.

What does not cross, and why:

- OpenAI to Anthropic: choices other than 0 (a message has one, and Messages can't ask for more);
  reasoning text (a thinking block is signed by Anthropic, and a client that did not ask for
  thinking must not get one); logprobs and legacy ``function_call`` (no place in a message).
- Anthropic to OpenAI: thinking and redacted thinking (Chat Completions has no field for them);
  server tool blocks (``server_tool_use`` and its results: run by Anthropic, not calls for the
  client to answer); citations (no field either). Text blocks are joined in ``content``.
"""

from __future__ import annotations

from tiermux._speedups import sse

__all__ = ["MAX_EVENT_BYTES", "ChatFromMessagesStream", "MessagesFromChatStream", "MessagesUsageTap"]

MAX_EVENT_BYTES = sse.MAX_EVENT_BYTES
ChatFromMessagesStream = sse.ChatFromMessagesStream
MessagesFromChatStream = sse.MessagesFromChatStream
MessagesUsageTap = sse.MessagesUsageTap
