"""The tests' SMTP server: aiosmtpd's Maildir handler, which also refuses
(550, a permanent failure) every recipient whose local part starts with
"refused", and names its pid in its NOOP reply, so a test knows the server
on a port is the child it started."""

import os

from aiosmtpd.handlers import Mailbox


class RefusingMailbox(Mailbox):
    async def handle_NOOP(self, server, session, envelope, arg):
        return f"250 OK pid={os.getpid()}"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].startswith("refused"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"
