"""Echo server: `aiowt run examples.echo:server --self-signed`.

Route `/echo` sends every datagram back unchanged, echoes the bytes of each
client-opened bidirectional stream on the same stream (finishing it when the client
finishes), and so answers each msgpack frame on a stream with the same object.
A client-opened unidirectional stream is echoed on a new server-opened one.
"""

from __future__ import annotations

from aiowt import Handler, Server, Stream


class Echo(Handler):
    async def on_datagram(self, data: bytes) -> None:
        self.send_datagram(data)

    async def on_stream_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        if stream.unidirectional:
            reply = self._replies.get(stream.stream_id)
            if reply is None:
                reply = self._replies[stream.stream_id] = self.open_stream(unidirectional=True)
            reply.write(data, end_stream=end_stream)
            if end_stream:
                del self._replies[stream.stream_id]
            else:
                await reply.drain()
        elif stream.writable:  # not if the peer stopped reading (STOP_SENDING)
            stream.write(data, end_stream=end_stream)
            if not end_stream:
                # Wait while the peer reads slower than it writes: without it a large
                # transfer fills the send buffer past its bound (SLOW_CONSUMER closes).
                await stream.drain()

    async def on_start(self) -> None:
        self._replies: dict[int, Stream] = {}


server = Server()
server.route("/echo", Echo)
