"""The tests' SMTP server: aiosmtpd's Maildir handler on 127.0.0.1, with the
faults a test turns on by a file in its Maildir (`python smtp_sink.py PORT
MAILDIR`):

- recipients whose local part starts with "refused" get 550 5.1.1 (the
  recipient refused for good);
- "refuse-sender": 554 5.7.1 at MAIL FROM, as a provider that paused the
  sending account;
- "refuse-auth": 535 5.7.8 to AUTH, as after a password expired (AUTH is
  offered in plain text; clients without credentials never ask);
- "reply-delay" (holding seconds, e.g. "12.5"): the message is stored at
  once, and the reply to its final dot comes that much later, as from a
  provider that queued the message and answers slowly.

Its NOOP reply names its pid, so a test knows the server on a port is the
child it started."""

import asyncio
import os
import sys

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult


class FaultyMailbox(Mailbox):
    def flag(self, name):
        return os.path.join(self.mail_dir, name)

    async def handle_NOOP(self, server, session, envelope, arg):
        return f"250 OK pid={os.getpid()}"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if os.path.exists(self.flag("refuse-sender")):
            return "554 5.7.1 Sending paused for this account"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].startswith("refused"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        stored = await super().handle_DATA(server, session, envelope)
        try:
            with open(self.flag("reply-delay")) as f:
                delay = float(f.read().strip() or "0")
        except FileNotFoundError:
            delay = 0
        if delay > 0:
            await asyncio.sleep(delay)
        return stored

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        if os.path.exists(self.flag("refuse-auth")):
            return AuthResult(
                success=False,
                handled=False,
                message="535 5.7.8 Authentication credentials invalid",
            )
        return AuthResult(success=True)


def main():
    port, maildir = int(sys.argv[1]), sys.argv[2]
    handler = FaultyMailbox(maildir)
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(
                handler,
                authenticator=handler.authenticate,
                auth_require_tls=False,
            ),
            host="127.0.0.1",
            port=port,
        )
    )
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
