"""`python -m examples.chat`: the chat demo, WebTransport and its page; prints the URL to open."""

from examples.chat.server import main

main()
